//! The node-facing side: starting workers, the port pool and the non-blocking command handle.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::dtmf;
use crate::recorder::{self, WriterMsg};
use crate::sys::{Epoll, Waker};
use crate::worker::{Command, Outputs, Remote, Timing, Worker, WorkerStats};
use crate::{
    Codec, Endpoint, EndpointId, EndpointStats, MediaConfig, MediaError, MediaEvent, MonitorMode,
    Prompt,
};

/// How long [`MediaHandle::endpoint_stats`] waits for a worker; they answer in microseconds.
const STATS_WAIT: Duration = Duration::from_millis(200);

/// Starts `config.workers` threads named "media-N" and the recording writer "media-rec", and
/// returns the handle that drives them and the channel of their events. Workers stop once every
/// clone of the handle is dropped, closing their recordings.
pub fn start(config: MediaConfig) -> Result<(MediaHandle, Receiver<MediaEvent>), MediaError> {
    validate(&config)?;
    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let pool = Arc::new(Pool::new(&config));
    let writer = recorder::spawn_writer(event_tx.clone())?;
    let mut shared = Shared {
        links: Vec::with_capacity(config.workers),
        pool: pool.clone(),
        bind_ip: config.bind_ip,
        next_serial: AtomicU64::new(1),
        writer: writer.clone(),
    };
    let timing = Timing {
        rtp_timeout: config.rtp_timeout,
        rtcp_interval: config.rtcp_interval,
    };
    for index in 0..config.workers {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker = Arc::new(Waker::new()?);
        let epoll = Epoll::new()?;
        let stats = Arc::new(WorkerStats::default());
        let worker = Worker::new(
            index,
            epoll,
            waker.clone(),
            rx,
            Outputs {
                events: event_tx.clone(),
                writer: writer.clone(),
            },
            pool.clone(),
            stats.clone(),
            timing,
            format!("switchyard-{index}@{}", config.bind_ip),
        )?;
        // On error `shared` is dropped, which stops the workers already started.
        thread::Builder::new()
            .name(format!("media-{index}"))
            .spawn(move || worker.run())?;
        shared.links.push(Link {
            commands: tx,
            waker,
            stats,
        });
    }
    Ok((
        MediaHandle {
            shared: Arc::new(shared),
        },
        event_rx,
    ))
}

fn validate(config: &MediaConfig) -> Result<(), MediaError> {
    let bad = |msg: String| Err(MediaError::Config(msg));
    if config.workers == 0 || config.workers > usize::from(u16::MAX) {
        return bad(format!("workers must be 1-65535, got {}", config.workers));
    }
    if Pool::pairs(config.port_min, config.port_max)
        .next()
        .is_none()
    {
        return bad(format!(
            "port range {}-{} holds no even/odd RTP/RTCP pair",
            config.port_min, config.port_max
        ));
    }
    if config.rtp_timeout.is_zero() {
        return bad("rtp_timeout must be positive".into());
    }
    if config.rtcp_interval < Duration::from_millis(100) {
        return bad("rtcp_interval must be at least 100 ms".into());
    }
    Ok(())
}

/// Drives the media workers. Cheap to clone, `Send + Sync`; no method waits on a worker, so all
/// are safe to call from async code. Commands to one endpoint are applied in the order sent;
/// commands naming an endpoint the worker no longer has are ignored (logged at debug level).
#[derive(Clone)]
pub struct MediaHandle {
    shared: Arc<Shared>,
}

struct Shared {
    links: Vec<Link>,
    pool: Arc<Pool>,
    bind_ip: IpAddr,
    next_serial: AtomicU64,
    writer: crossbeam_channel::Sender<WriterMsg>,
}

struct Link {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Disconnect each channel before waking its worker, so the worker sees it closed.
        for link in self.links.drain(..) {
            let Link {
                commands, waker, ..
            } = link;
            drop(commands);
            waker.wake();
        }
    }
}

/// Counters summed over all workers since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub endpoints: usize,
    /// Datagrams read from RTP ports.
    pub received: u64,
    /// Packets forwarded to a bridged leg.
    pub relayed: u64,
    /// Playback packets sent.
    pub played: u64,
    /// Datagrams that were not valid RTP.
    pub invalid: u64,
    /// Valid RTP dropped: no remote yet, not from the latched address, or an unnegotiated
    /// payload type.
    pub unexpected: u64,
    /// Valid compound RTCP packets received.
    pub rtcp_received: u64,
    /// RTCP datagrams dropped: invalid, from an endpoint without a remote, or from a host
    /// other than the latched one.
    pub rtcp_invalid: u64,
    pub rtcp_sent: u64,
    /// Mixed packets sent (supervisor monitoring, conferences).
    pub mixed: u64,
    pub send_errors: u64,
    /// CPU time of each worker thread (sampled every 250 ms).
    pub worker_cpu: Vec<Duration>,
}

impl MediaHandle {
    /// Binds a new endpoint's RTP (even) and RTCP (odd) ports here, on the calling thread, so
    /// errors surface at once, then hands the sockets to a worker: the one owning `near` (legs of
    /// one call must share a worker to be bridged), else the least loaded.
    pub fn allocate(&self, near: Option<EndpointId>) -> Result<Endpoint, MediaError> {
        let worker = match near {
            Some(id) if id.worker() < self.shared.links.len() => id.worker(),
            Some(id) => return Err(MediaError::UnknownEndpoint(id)),
            None => self.shared.pool.least_loaded(),
        };
        let (port, rtp, rtcp) = self.shared.pool.bind(self.shared.bind_ip)?;
        let serial = self.shared.next_serial.fetch_add(1, Ordering::Relaxed);
        let id = EndpointId::new(worker, serial);
        self.shared.pool.load[worker].fetch_add(1, Ordering::Relaxed);
        let sent = self.send(
            worker,
            Command::Add {
                id,
                port,
                rtp,
                rtcp,
            },
        );
        if sent.is_err() {
            self.shared.pool.load[worker].fetch_sub(1, Ordering::Relaxed);
            self.shared.pool.free(port);
            return Err(MediaError::WorkerGone(worker));
        }
        Ok(Endpoint {
            id,
            local: SocketAddr::new(self.shared.bind_ip, port),
        })
    }

    /// Sets where to send (from SDP) and the negotiated payload types. Packets are sent to
    /// `remote` until the first valid RTP packet arrives; then the endpoint latches to the
    /// address it came from (symmetric RTP, for NAT) and drops RTP from anywhere else. A new
    /// `remote` address (re-INVITE) unlatches it. Also starts the inactivity clock.
    pub fn set_remote(
        &self,
        ep: EndpointId,
        remote: SocketAddr,
        codec: Codec,
        payload_type: u8,
        telephone_event_pt: Option<u8>,
    ) {
        let remote = Remote {
            addr: remote,
            codec,
            payload_type: payload_type & 0x7F,
            telephone_event_pt: telephone_event_pt.map(|pt| pt & 0x7F),
        };
        self.command(ep, Command::SetRemote { id: ep, remote });
    }

    /// Plays `prompt` as paced 20 ms packets, replacing any playback. While it plays, audio
    /// relayed from a bridged peer is not sent to this endpoint; relaying resumes when it ends.
    pub fn play(&self, ep: EndpointId, prompt: Arc<Prompt>, looped: bool) {
        self.command(
            ep,
            Command::Play {
                id: ep,
                prompts: vec![prompt],
                looped,
                interruptible: false,
            },
        );
    }

    /// Plays `prompts` back to back, once ("you are number" "3" "in the queue"), like
    /// [`Self::play`]. With `interrupt_on_dtmf` a key press from the endpoint stops it and
    /// raises [`MediaEvent::PlaybackInterrupted`]. An empty sequence finishes at once.
    pub fn play_sequence(
        &self,
        ep: EndpointId,
        prompts: Vec<Arc<Prompt>>,
        interrupt_on_dtmf: bool,
    ) {
        self.command(
            ep,
            Command::Play {
                id: ep,
                prompts,
                looped: false,
                interruptible: interrupt_on_dtmf,
            },
        );
    }

    pub fn stop_playback(&self, ep: EndpointId) {
        self.command(ep, Command::StopPlayback { id: ep });
    }

    /// Relays RTP between `a` and `b` (transcoding PCMU<->PCMA when their codecs differ, passing
    /// telephone-events when both negotiated them) and stops playback on both. Either one's
    /// previous bridge is dissolved. Both must be on one worker (allocate `b` near `a`).
    pub fn bridge(&self, a: EndpointId, b: EndpointId) -> Result<(), MediaError> {
        if a.worker() != b.worker() {
            return Err(MediaError::NotColocated { a, b });
        }
        self.send(a.worker(), Command::Bridge { a, b })
            .map_err(|()| MediaError::WorkerGone(a.worker()))
    }

    /// Closes the endpoint's sockets and returns its ports to the pool; its bridge peer, if any,
    /// is left unbridged.
    pub fn release(&self, ep: EndpointId) {
        self.command(ep, Command::Release { id: ep });
    }

    /// The endpoint's RTP/RTCP statistics (put them in the call record before `release`).
    /// Waits for the worker, which answers between two packets (bounded at 200 ms).
    pub fn endpoint_stats(&self, ep: EndpointId) -> Result<EndpointStats, MediaError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(ep.worker(), Command::Stats { id: ep, reply })
            .map_err(|()| MediaError::WorkerGone(ep.worker()))?;
        match answer.recv_timeout(STATS_WAIT) {
            Ok(stats) => Ok(stats),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(MediaError::UnknownEndpoint(ep))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(MediaError::WorkerGone(ep.worker()))
            }
        }
    }

    /// Records the call between `caller` and `agent` to a stereo 8 kHz 16-bit WAV at `path`
    /// (parent directories are created): caller on the left, agent on the right, each through
    /// a jitter buffer and aligned on the worker's 20 ms clock. The file is created here, so
    /// errors surface at once; it is written by the recording thread, flushed every second
    /// (a crash loses at most about a second and leaves a valid file), and closed by
    /// [`Self::stop_recording`] or the release of either leg, which raises
    /// [`MediaEvent::RecordingStopped`]. A new recording of `caller` replaces the previous one.
    pub fn record(
        &self,
        caller: EndpointId,
        agent: EndpointId,
        path: &Path,
    ) -> Result<(), MediaError> {
        if caller.worker() != agent.worker() {
            return Err(MediaError::NotColocated {
                a: caller,
                b: agent,
            });
        }
        if caller == agent {
            return Err(MediaError::SameEndpoint);
        }
        let failed = |source| MediaError::Recording {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(hound::Error::IoError(e)))?;
        }
        let wav = hound::WavWriter::create(path, recorder::wav_spec()).map_err(failed)?;
        let id = self.shared.next_serial.fetch_add(1, Ordering::Relaxed);
        // Two blocks per recording, allocated here rather than on the worker: one being
        // filled, one with the writer; written blocks come back through `recycle`.
        let (recycle, spare) = crossbeam_channel::bounded(2);
        let _ = recycle.try_send(recorder::new_block());
        self.shared
            .writer
            .send(WriterMsg::Open {
                id,
                endpoint: caller,
                path: path.to_owned(),
                wav,
                recycle,
            })
            .map_err(|_| MediaError::WorkerGone(caller.worker()))?;
        self.send(
            caller.worker(),
            Command::Record {
                id,
                caller,
                agent,
                block: recorder::new_block(),
                spare,
            },
        )
        .map_err(|()| MediaError::WorkerGone(caller.worker()))
    }

    /// Stops the recording `ep` (either leg) takes part in.
    pub fn stop_recording(&self, ep: EndpointId) {
        self.command(ep, Command::StopRecording { id: ep });
    }

    /// Joins `supervisor` to the call bridged between `caller` and `agent` (see
    /// [`MonitorMode`]). Audio that is mixed goes through jitter buffers, is summed in linear
    /// PCM with saturation and sent in each leg's codec; a leg that hears only its bridge peer
    /// keeps the plain relay. `Barge` is a three-way conference. All three must be on one
    /// worker (allocate the supervisor near the caller). Ends with [`Self::stop_monitor`] or
    /// the release of any of the three.
    pub fn monitor(
        &self,
        supervisor: EndpointId,
        caller: EndpointId,
        agent: EndpointId,
        mode: MonitorMode,
    ) -> Result<(), MediaError> {
        for other in [caller, agent] {
            if other.worker() != supervisor.worker() {
                return Err(MediaError::NotColocated {
                    a: supervisor,
                    b: other,
                });
            }
        }
        if supervisor == caller || supervisor == agent || caller == agent {
            return Err(MediaError::SameEndpoint);
        }
        self.send(
            supervisor.worker(),
            Command::Monitor {
                supervisor,
                caller,
                agent,
                mode,
            },
        )
        .map_err(|()| MediaError::WorkerGone(supervisor.worker()))
    }

    pub fn set_monitor_mode(&self, supervisor: EndpointId, mode: MonitorMode) {
        self.command(supervisor, Command::SetMonitorMode { supervisor, mode });
    }

    /// Removes the mix; caller and agent go back to plain relay.
    pub fn stop_monitor(&self, supervisor: EndpointId) {
        self.command(supervisor, Command::StopMonitor { supervisor });
    }

    /// Sends key `digit` (0-9, *, #, A-D) to the endpoint for `duration`: as RFC 4733
    /// telephone-events when its remote negotiated them (three end packets, on the endpoint's
    /// own SSRC and numbering), else as in-band tones in its codec. Relayed audio to the
    /// endpoint pauses meanwhile.
    pub fn send_dtmf(
        &self,
        ep: EndpointId,
        digit: char,
        duration: Duration,
    ) -> Result<(), MediaError> {
        if dtmf::event_code(digit).is_none() {
            return Err(MediaError::InvalidDigit(digit));
        }
        self.send(
            ep.worker(),
            Command::SendDtmf {
                id: ep,
                digit,
                duration,
            },
        )
        .map_err(|()| MediaError::WorkerGone(ep.worker()))
    }

    /// Turns in-band DTMF detection on the endpoint's received audio on or off (off by
    /// default, to keep relay cheap): for legs that did not negotiate telephone-events.
    /// Detected keys raise [`MediaEvent::Dtmf`] like RFC 4733 ones.
    pub fn detect_inband_dtmf(&self, ep: EndpointId, enabled: bool) {
        self.command(ep, Command::DetectInband { id: ep, enabled });
    }

    pub fn stats(&self) -> MediaStats {
        let mut total = MediaStats {
            endpoints: self
                .shared
                .pool
                .load
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .sum(),
            ..MediaStats::default()
        };
        for link in &self.shared.links {
            let s = &link.stats;
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            total.received += get(&s.received);
            total.relayed += get(&s.relayed);
            total.played += get(&s.played);
            total.invalid += get(&s.invalid);
            total.unexpected += get(&s.unexpected);
            total.rtcp_received += get(&s.rtcp_received);
            total.rtcp_invalid += get(&s.rtcp_invalid);
            total.rtcp_sent += get(&s.rtcp_sent);
            total.mixed += get(&s.mixed);
            total.send_errors += get(&s.send_errors);
            total
                .worker_cpu
                .push(Duration::from_nanos(get(&s.cpu_nanos)));
        }
        total
    }

    /// Sends a command for `ep`; a worker that is gone only gets a warning, as the endpoint is
    /// gone with it.
    fn command(&self, ep: EndpointId, cmd: Command) {
        if self.send(ep.worker(), cmd).is_err() {
            tracing::warn!(endpoint = %ep, "media worker is gone; command dropped");
        }
    }

    fn send(&self, worker: usize, cmd: Command) -> Result<(), ()> {
        let link = self.shared.links.get(worker).ok_or(())?;
        link.commands.send(cmd).map_err(|_| ())?;
        link.waker.wake();
        Ok(())
    }
}

/// Free RTP ports, shared by the handle (allocation) and the workers (release), and per-worker
/// endpoint counts for placement.
pub(crate) struct Pool {
    /// Even ports, reused in FIFO order so a released port rests as long as possible before
    /// another call gets it (stray packets from the old call then find nobody).
    free: Mutex<VecDeque<u16>>,
    min: u16,
    max: u16,
    pub(crate) load: Box<[AtomicUsize]>,
}

impl Pool {
    fn new(config: &MediaConfig) -> Self {
        Self {
            free: Mutex::new(Pool::pairs(config.port_min, config.port_max).collect()),
            min: config.port_min,
            max: config.port_max,
            load: (0..config.workers).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Even RTP ports whose RTCP port (+1) is also in range.
    fn pairs(min: u16, max: u16) -> impl Iterator<Item = u16> {
        (min..max).filter(|p| p % 2 == 0)
    }

    fn least_loaded(&self) -> usize {
        (0..self.load.len())
            .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Takes the next free pair and binds both sockets, skipping ports something else holds.
    fn bind(&self, ip: IpAddr) -> Result<(u16, UdpSocket, UdpSocket), MediaError> {
        let attempts = self.queue().len();
        for _ in 0..attempts {
            let Some(port) = self.queue().pop_front() else {
                break;
            };
            match bind_pair(ip, port) {
                Ok((rtp, rtcp)) => return Ok((port, rtp, rtcp)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => self.free(port),
                Err(source) => {
                    self.free(port);
                    return Err(MediaError::Bind {
                        addr: SocketAddr::new(ip, port),
                        source,
                    });
                }
            }
        }
        Err(MediaError::NoPorts {
            min: self.min,
            max: self.max,
        })
    }

    pub(crate) fn free(&self, port: u16) {
        self.queue().push_back(port);
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<u16>> {
        // The queue stays consistent even if a holder panicked; keep using it.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let rtp = UdpSocket::bind((ip, port))?;
    let rtcp = UdpSocket::bind((ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}
