//! The few system calls std does not wrap: kernel receive timestamps on UDP sockets
//! (`SO_TIMESTAMPNS`) and the open-files limit.
//!
//! Kernel timestamps are what let one media thread serve every leg: it drains each socket only
//! once per 20 ms, yet every packet's arrival time is the kernel's, not the moment the harness
//! got around to reading it, so jitter and gaps measure the node and the network rather than
//! the harness's own scheduling.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds, the clock `SO_TIMESTAMPNS` stamps packets with.
pub fn realtime_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Asks the kernel to stamp every datagram received on `socket`.
///
/// Linux turns receive timestamping on system-wide, lazily (a deferred static-key switch),
/// while at least one socket asks for it; until then packets are stamped when read. The media
/// thread therefore holds one such socket for its whole life (see `media`).
pub fn enable_rx_timestamps(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open for the lifetime of `socket`; the option value is a c_int that
    // outlives the call, and its size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receives one datagram without blocking: its length and the kernel's arrival time (wall
/// clock ns; `None` if the kernel gave none). `WouldBlock` when the socket is empty.
pub fn recv_timestamped(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, Option<i64>)> {
    // Room for one cmsghdr carrying a timespec, aligned as cmsghdr requires.
    let mut control = [MaybeUninit::<u64>::uninit(); 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>() as _;
    // SAFETY: `msg` points at `iov` (covering `buf`) and `control`, all alive and exclusively
    // borrowed for the duration of the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with well-formed cmsgs;
    // the CMSG_* helpers stay within that length, and a timespec is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                stamp = Some(ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// Asks for `bytes` of socket receive and send buffer (the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`): at hundreds of calls per second a default 208 KiB SIP
/// buffer overflows during bursts, and every lost datagram costs a 500 ms retransmission.
pub fn set_buffer_sizes(socket: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: as in `enable_rx_timestamps`: an open fd and a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit: every call leg holds an RTP socket, and
/// the usual soft limit of 1024 caps the harness near 500 concurrent calls. Returns the new
/// soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    // SAFETY: rlimit is plain data, filled by getrlimit before use.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above; the kernel only reads `lim`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_arrive_with_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_rx_timestamps(&rx).unwrap();
        // The kernel switches receive timestamping on for the system a moment later.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            recv_timestamped(&rx, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let before = realtime_ns();
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (n, stamp) = recv_timestamped(&rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let stamp = stamp.expect("kernel timestamp");
        assert!(stamp >= before - 1_000_000 && stamp <= realtime_ns());
        // The stamp is the arrival, not the (20 ms later) read.
        let read = realtime_ns();
        assert!(read - stamp >= 15_000_000, "stamp {stamp} read {read}");
    }
}
