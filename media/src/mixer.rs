//! Supervisor monitoring and three-way conferences: who hears whom, and mixing in linear PCM.

use crate::rtp::FRAME_SAMPLES;

const FRAME: usize = FRAME_SAMPLES as usize;

/// How a supervisor joins a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MonitorMode {
    /// The supervisor hears caller and agent; nobody hears the supervisor.
    Listen,
    /// The supervisor hears both; the agent hears caller and supervisor; the caller hears only
    /// the agent.
    Whisper,
    /// Everyone hears the other two (a three-way conference).
    Barge,
}

/// The three parties of a mix, indexing [`hears`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Caller = 0,
    Agent = 1,
    Supervisor = 2,
}

pub(crate) const ROLES: [Role; 3] = [Role::Caller, Role::Agent, Role::Supervisor];

/// Which parties `role` hears in `mode`, indexed by role.
pub(crate) fn hears(mode: MonitorMode, role: Role) -> [bool; 3] {
    let supervisor_heard = match role {
        Role::Supervisor => false,
        Role::Agent => mode != MonitorMode::Listen,
        Role::Caller => mode == MonitorMode::Barge,
    };
    let mut heard = [true, true, supervisor_heard];
    heard[role as usize] = false;
    heard
}

/// Sums the chosen 20 ms frames in 32 bits, then saturates to 16.
pub(crate) fn mix(frames: [&[i16; FRAME]; 3], chosen: [bool; 3], out: &mut [i16; FRAME]) {
    for (i, o) in out.iter_mut().enumerate() {
        let sum: i32 = frames
            .iter()
            .zip(chosen)
            .filter(|(_, c)| *c)
            .map(|(f, _)| i32::from(f[i]))
            .sum();
        *o = sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_hears_whom() {
        use MonitorMode::*;
        use Role::*;
        // [caller, agent, supervisor]
        assert_eq!(hears(Listen, Caller), [false, true, false]);
        assert_eq!(hears(Listen, Agent), [true, false, false]);
        assert_eq!(hears(Listen, Supervisor), [true, true, false]);
        assert_eq!(hears(Whisper, Caller), [false, true, false]);
        assert_eq!(hears(Whisper, Agent), [true, false, true]);
        assert_eq!(hears(Whisper, Supervisor), [true, true, false]);
        assert_eq!(hears(Barge, Caller), [false, true, true]);
        assert_eq!(hears(Barge, Agent), [true, false, true]);
        assert_eq!(hears(Barge, Supervisor), [true, true, false]);
    }

    #[test]
    fn mixes_with_saturation() {
        let a = [30_000i16; 160];
        let b = [10_000i16; 160];
        let c = [-5i16; 160];
        let mut out = [1i16; 160];
        mix([&a, &b, &c], [true, true, false], &mut out);
        assert!(out.iter().all(|&s| s == i16::MAX));
        let low = [-30_000i16; 160];
        mix([&low, &low, &a], [true, true, true], &mut out);
        assert!(out.iter().all(|&s| s == -30_000));
        mix([&a, &b, &c], [false, true, true], &mut out);
        assert!(out.iter().all(|&s| s == 9_995));
        mix([&a, &b, &c], [false, false, false], &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }
}
