//! Relay benchmark: N bridged calls on 127.0.0.1, each leg sending 20 ms RTP packets (50/s) from a
//! generator thread, while a receiver thread reads what the workers relay. Reports loss, added
//! latency (send to receive, both stamped in this process) and the media workers' CPU time.
//!
//! On loopback the sender's syscall also runs the receiving side's network stack, so the harness
//! costs about as much CPU as the workers; on a small machine it competes with them.
//!
//! Usage: `cargo run --release -p switchyard-media --example relay_bench -- \
//!         [--calls 500] [--seconds 10] [--workers 1] [--transcode] \
//!         [--rtpengine 127.0.0.1:22230 --rtpengine-pid PID]`
//! `--transcode` makes every call's second leg PCMA, so all audio is transcoded.
//! `--rtpengine` runs the same load through an rtpengine already running there instead of
//! Switchyard's workers: calls are set up with its ng protocol (`offer`/`answer`, bencode over
//! UDP) and its CPU time is read from `/proc/PID/stat` (all its threads).
//! `--relay-cpu N` pins the media worker threads to CPU N (run the whole bench under
//! `taskset -c M` to keep the harness on another CPU).
//! `bench/media-vs-rtpengine.sh` runs both at several call counts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use switchyard_media::rtp::{self, Stamp};
use switchyard_media::{Codec, MediaConfig, MediaHandle, g711, start};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const FRAME: Duration = Duration::from_millis(20);
const PAYLOAD: usize = 160;

struct Args {
    calls: usize,
    seconds: u64,
    workers: usize,
    transcode: bool,
    rtpengine: Option<SocketAddr>,
    rtpengine_pid: Option<u32>,
    relay_cpu: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        calls: 500,
        seconds: 10,
        workers: 1,
        transcode: false,
        rtpengine: None,
        rtpengine_pid: None,
        relay_cpu: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--rtpengine" {
            let addr = it.next().and_then(|v| v.parse().ok());
            args.rtpengine = Some(addr.expect("--rtpengine IP:PORT"));
            continue;
        }
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("numeric value")
        };
        match flag.as_str() {
            "--rtpengine-pid" => args.rtpengine_pid = Some(value() as u32),
            "--relay-cpu" => args.relay_cpu = Some(value() as usize),
            "--calls" => args.calls = value() as usize,
            "--seconds" => args.seconds = value(),
            "--workers" => args.workers = value() as usize,
            "--transcode" => args.transcode = true,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// The send time rides in the payload as 16 nibbles, each a loud G.711 code that stays distinct
/// through PCMU<->PCMA transcoding, so the receiver can read it back on either law.
struct TimeCodec {
    send: [u8; 16],
    /// Received byte -> nibble (0xFF: not a time code).
    recv: [u8; 256],
}

impl TimeCodec {
    /// Codes a phone using `mine` sends, and decoding of what it receives from a peer using
    /// `theirs` after the relay converted it to `mine`.
    fn pair(mine: Codec, theirs: Codec) -> TimeCodec {
        let send = Self::codes(mine);
        let mut arriving = Self::codes(theirs);
        g711::transcode(&mut arriving, theirs, mine);
        let mut recv = [0xFF; 256];
        for (nibble, &code) in arriving.iter().enumerate() {
            assert_eq!(recv[code as usize], 0xFF, "time codes must stay distinct");
            recv[code as usize] = nibble as u8;
        }
        TimeCodec { send, recv }
    }

    fn codes(codec: Codec) -> [u8; 16] {
        let mut codes: [u8; 16] = std::array::from_fn(|i| 0x80 + i as u8);
        g711::transcode(&mut codes, Codec::Pcmu, codec);
        codes
    }

    fn write(&self, nanos: u64, out: &mut [u8]) {
        for (i, byte) in out[..16].iter_mut().enumerate() {
            *byte = self.send[((nanos >> (4 * i)) & 0xF) as usize];
        }
    }

    fn read(&self, payload: &[u8]) -> Option<u64> {
        let mut nanos = 0;
        for (i, &byte) in payload.get(..16)?.iter().enumerate() {
            let nibble = self.recv[byte as usize];
            if nibble == 0xFF {
                return None;
            }
            nanos |= u64::from(nibble) << (4 * i);
        }
        Some(nanos)
    }
}

/// One side of every call: all A legs share one socket, all B legs another, so the harness can
/// batch with sendmmsg/recvmmsg and leave the CPU to the workers. The endpoints still see one
/// remote per leg (each latches to the shared socket's address).
struct Side {
    sock: UdpSocket,
    codec: Codec,
    time: TimeCodec,
    /// The media endpoint of each call's leg on this side.
    endpoints: Vec<SocketAddr>,
}

impl Side {
    fn payload_type(&self) -> u8 {
        if self.codec == Codec::Pcmu { 0 } else { 8 }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn side(codec: Codec, peer: Codec) -> std::io::Result<Side> {
    let sock = UdpSocket::bind((LOCALHOST, 0))?;
    sock.set_nonblocking(true)?;
    // This socket takes every call's packets; ask for a few MiB (capped by net.core.rmem_max).
    let size: libc::c_int = 4 << 20;
    // SAFETY: passes a live c_int of the stated size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    Ok(Side {
        sock,
        codec,
        time: TimeCodec::pair(codec, peer),
        endpoints: Vec::new(),
    })
}

/// What relays the calls: Switchyard's media workers in this process, or an rtpengine.
enum Relay {
    Switchyard(MediaHandle),
    Rtpengine { pid: u32 },
}

impl Relay {
    /// CPU time used so far by the relay: the media worker threads, or the rtpengine process.
    fn cpu(&self) -> Duration {
        match self {
            Relay::Switchyard(media) => media.stats().worker_cpu.iter().sum(),
            Relay::Rtpengine { pid } => process_cpu(*pid),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Relay::Switchyard(_) => "switchyard",
            Relay::Rtpengine { .. } => "rtpengine",
        }
    }
}

/// Pins this process's threads whose name starts with `prefix` to `cpu`.
fn pin_threads(prefix: &str, cpu: usize) -> std::io::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call reads it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// User plus system time of a process, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks: u64 = fields.iter().sum();
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let b_codec = if args.transcode {
        Codec::Pcma
    } else {
        Codec::Pcmu
    };
    let mut sides = [side(Codec::Pcmu, b_codec)?, side(b_codec, Codec::Pcmu)?];
    let relay = match args.rtpengine {
        None => {
            let (media, _events) = start(MediaConfig {
                workers: args.workers,
                bind_ip: LOCALHOST,
                port_min: 50_000,
                port_max: 59_999,
                rtp_timeout: Duration::from_secs(60),
                rtcp_interval: Duration::from_secs(5),
            })?;
            for _ in 0..args.calls {
                let a = media.allocate(None)?;
                let b = media.allocate(Some(a.id))?;
                for (ep, side) in [a, b].into_iter().zip(sides.iter_mut()) {
                    media.set_remote(
                        ep.id,
                        side.sock.local_addr()?,
                        side.codec,
                        side.payload_type(),
                        None,
                    );
                    side.endpoints.push(ep.local);
                }
                media.bridge(a.id, b.id)?;
            }
            if let Some(cpu) = args.relay_cpu {
                pin_threads("media-", cpu)?;
            }
            Relay::Switchyard(media)
        }
        Some(ng) => {
            assert!(
                !args.transcode,
                "--transcode is not supported with --rtpengine"
            );
            let pid = args
                .rtpengine_pid
                .expect("--rtpengine needs --rtpengine-pid");
            let control = UdpSocket::bind((LOCALHOST, 0))?;
            control.set_read_timeout(Some(Duration::from_secs(2)))?;
            let [a_addr, b_addr] = [sides[0].sock.local_addr()?, sides[1].sock.local_addr()?];
            for call in 0..args.calls {
                let call_id = format!("bench-{}-{call}", std::process::id());
                // The offer carries A's address and returns the port B sends to; the answer
                // carries B's and returns the port A sends to.
                let to_b = ng_port(&control, ng, "offer", &call_id, None, a_addr)?;
                let to_a = ng_port(&control, ng, "answer", &call_id, Some("tb"), b_addr)?;
                sides[0].endpoints.push(SocketAddr::new(LOCALHOST, to_a));
                sides[1].endpoints.push(SocketAddr::new(LOCALHOST, to_b));
            }
            Relay::Rtpengine { pid }
        }
    };
    let sides = Arc::new(sides);
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    let receiver = {
        let (sides, stop) = (sides.clone(), stop.clone());
        thread::Builder::new()
            .name("bench-rx".into())
            .spawn(move || receive(&sides, epoch, &stop))?
    };
    // Let the relay register every socket before traffic starts.
    thread::sleep(Duration::from_millis(300));

    let cpu_before = relay.cpu();
    let started = Instant::now();
    let (sent, gen_cpu) = {
        let sides = sides.clone();
        let run = Duration::from_secs(args.seconds);
        thread::Builder::new()
            .name("bench-tx".into())
            .spawn(move || generate(&sides, epoch, run))?
            .join()
            .map_err(|_| "generator panicked")?
    };
    let wall = started.elapsed();
    // Worker CPU is sampled every 250 ms; wait for a sample that covers the whole run (and for
    // packets still in flight).
    thread::sleep(Duration::from_millis(300));
    let relay_cpu = relay.cpu().saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, bad, rx_cpu) = receiver.join().map_err(|_| "receiver panicked")?;

    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&ns| ns as f64 / 1000.0)
    };
    let received = latencies.len() as u64;
    println!(
        "relay={} calls={} workers={} transcode={} seconds={:.1}",
        relay.name(),
        args.calls,
        args.workers,
        args.transcode,
        wall.as_secs_f64()
    );
    let relay_counts = match &relay {
        Relay::Switchyard(media) => {
            let stats = media.stats();
            format!(
                " relayed={} send_errors={}",
                stats.relayed, stats.send_errors
            )
        }
        Relay::Rtpengine { .. } => String::new(),
    };
    println!(
        "sent={sent} received={received} loss={:.4}% undecodable={bad}{relay_counts}",
        100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64,
    );
    println!(
        "latency_us p50={:.0} p99={:.0} p99.9={:.0} max={:.0}",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    println!(
        "relay_cpu={:.2}s ({:.1}% of one core, {:.2} us/packet at {:.0} pkt/s, {:.1} us CPU per call-second); harness: generator={:.2}s receiver={:.2}s",
        relay_cpu.as_secs_f64(),
        100.0 * relay_cpu.as_secs_f64() / wall.as_secs_f64(),
        1e6 * relay_cpu.as_secs_f64() / sent.max(1) as f64,
        sent as f64 / wall.as_secs_f64(),
        1e6 * relay_cpu.as_secs_f64() / wall.as_secs_f64() / args.calls.max(1) as f64,
        gen_cpu.as_secs_f64(),
        rx_cpu.as_secs_f64()
    );
    Ok(())
}

/// A bencoded string.
fn bencode(out: &mut String, s: &str) {
    out.push_str(&format!("{}:{s}", s.len()));
}

/// Sends an ng `offer` or `answer` for a PCMU stream at `addr` and returns the media port
/// rtpengine put in the SDP it answered with.
fn ng_port(
    control: &UdpSocket,
    ng: SocketAddr,
    command: &str,
    call_id: &str,
    to_tag: Option<&str>,
    addr: SocketAddr,
) -> Result<u16, Box<dyn std::error::Error>> {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    );
    let cookie = format!("{call_id}-{command}");
    let mut msg = format!("{cookie} d");
    for (k, v) in [
        ("command", command),
        ("call-id", call_id),
        ("from-tag", "fa"),
        ("sdp", &sdp),
    ] {
        bencode(&mut msg, k);
        bencode(&mut msg, v);
    }
    if let Some(tag) = to_tag {
        bencode(&mut msg, "to-tag");
        bencode(&mut msg, tag);
    }
    msg.push('e');
    control.send_to(msg.as_bytes(), ng)?;
    let mut buf = [0u8; 4096];
    let (n, _) = control.recv_from(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]);
    let port = reply
        .split("m=audio ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("rtpengine {command} failed: {reply}"))?;
    Ok(port)
}

fn sockaddr_in(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        panic!("bench runs on IPv4 loopback");
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SLICES: usize = 20;

/// Every leg sends one packet per 20 ms; calls are spread over 20 one-millisecond slices, and
/// each slice's packets go out in one sendmmsg per side.
fn generate(sides: &[Side; 2], epoch: Instant, run: Duration) -> (u64, Duration) {
    let calls = sides[0].endpoints.len();
    let batch = calls.div_ceil(SLICES);
    let mut packets = vec![[0xFFu8; rtp::HEADER_LEN + PAYLOAD]; batch];
    let mut iovs = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0
        };
        batch
    ];
    let mut names: Vec<Vec<libc::sockaddr_in>> = sides
        .iter()
        .map(|s| s.endpoints.iter().map(|&a| sockaddr_in(a)).collect())
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut frame = 0u32;
    while start.elapsed() < run {
        let frame_start = start + FRAME * frame;
        for s in 0..SLICES {
            let due = frame_start + FRAME * s as u32 / SLICES as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let (lo, hi) = (s * calls / SLICES, (s + 1) * calls / SLICES);
            for (side, names) in sides.iter().zip(names.iter_mut()) {
                for (k, call) in (lo..hi).enumerate() {
                    let packet = &mut packets[k];
                    packet[0] = 0x80;
                    let stamp = Stamp {
                        seq: frame as u16,
                        timestamp: frame * PAYLOAD as u32,
                        marker: false,
                    };
                    rtp::write_header(packet, side.payload_type(), stamp, call as u32 + 1);
                    side.time.write(
                        epoch.elapsed().as_nanos() as u64,
                        &mut packet[rtp::HEADER_LEN..],
                    );
                    iovs[k] = libc::iovec {
                        iov_base: packet.as_mut_ptr().cast(),
                        iov_len: packet.len(),
                    };
                    let hdr = &mut msgs[k].msg_hdr;
                    hdr.msg_name = (&raw mut names[call]).cast();
                    hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                    hdr.msg_iov = &raw mut iovs[k];
                    hdr.msg_iovlen = 1;
                }
                let mut off = 0;
                while off < hi - lo {
                    // SAFETY: headers, iovecs, buffers and names stay alive and unmoved for the
                    // call.
                    let n = unsafe {
                        libc::sendmmsg(
                            side.sock.as_raw_fd(),
                            msgs[off..].as_mut_ptr(),
                            (hi - lo - off) as u32,
                            0,
                        )
                    };
                    if n <= 0 {
                        break;
                    }
                    off += n as usize;
                }
                sent += off as u64;
            }
        }
        frame += 1;
    }
    (sent, thread_cpu())
}

/// Reads both sides with recvmmsg and records each packet's one-way latency.
fn receive(sides: &[Side; 2], epoch: Instant, stop: &AtomicBool) -> (Vec<u64>, u64, Duration) {
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let mut fds: Vec<libc::pollfd> = sides
        .iter()
        .map(|s| libc::pollfd {
            fd: s.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let calls = sides[0].endpoints.len();
    let mut latencies = Vec::with_capacity(calls * 2 * 50 * 120);
    let mut bad = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        for side in sides {
            loop {
                // SAFETY: every header points at a live iovec and 2 KiB buffer.
                let n = unsafe {
                    libc::recvmmsg(
                        side.sock.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if n <= 0 {
                    break;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                for (msg, buf) in msgs.iter().zip(&bufs).take(n as usize) {
                    let packet = &buf[..msg.msg_len as usize];
                    let sent = rtp::parse(packet)
                        .ok()
                        .and_then(|h| side.time.read(&packet[h.payload_start..h.payload_end]));
                    match sent {
                        Some(sent) => latencies.push(now.saturating_sub(sent)),
                        None => bad += 1,
                    }
                }
            }
        }
    }
    (latencies, bad, thread_cpu())
}
