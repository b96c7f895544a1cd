//! systemd integration without libsystemd: socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`: serve a listening socket systemd passed as fd 3 instead of
//! binding one) and readiness notification (`NOTIFY_SOCKET`: `READY=1`
//! once listening, `STOPPING=1` on shutdown).
//!
//! Both read their variables once at start and then remove them from the
//! environment, so the agent programs the server starts neither inherit a
//! listening socket nor talk to systemd in its name.

use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The listening socket systemd passed, if this process was socket
/// activated. Err: the variables are set for this process but unusable.
pub fn take_listener() -> Result<Option<TcpListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (our parent, say): not ours to take.
        return Ok(None);
    }
    let count: i32 = fds
        .trim()
        .parse()
        .map_err(|_| format!("invalid LISTEN_FDS '{fds}'"))?;
    if count < 1 {
        return Ok(None);
    }
    if count > 1 {
        crate::warn!("LISTEN_FDS is {count}: serving the first socket (fd 3) only");
    }
    let fd = LISTEN_FDS_START;
    // Every passed descriptor is close-on-exec: agent programs must not
    // inherit a listening socket (the unused ones stay open, harmlessly).
    for passed in fd..fd.saturating_add(count) {
        // SAFETY: fcntl only reads and sets the flags of a descriptor
        // systemd passed to this process.
        unsafe {
            let flags = libc::fcntl(passed, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(passed, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    // SAFETY: fcntl and getsockopt only read flags and options of fd 3,
    // which systemd passed to this process for it to own.
    let is_stream_socket = unsafe {
        if libc::fcntl(fd, libc::F_GETFD) < 0 {
            return Err("LISTEN_FDS is set but fd 3 is not open".into());
        }
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
            && kind == libc::SOCK_STREAM
    };
    if !is_stream_socket {
        return Err("the socket passed as fd 3 is not a stream socket".into());
    }
    // SAFETY: fd 3 is an open stream socket passed to us; from here on
    // the listener owns it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot use the passed socket: {e}"))?;
    Ok(Some(listener))
}

/// Where `READY=1` and `STOPPING=1` go.
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace);
    /// None when it is unset or unusable.
    pub fn from_env() -> Option<Notifier> {
        let target = std::env::var("NOTIFY_SOCKET").ok()?;
        std::env::remove_var("NOTIFY_SOCKET");
        let addr = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&target).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        // A notification must never hold the loop up.
        socket.set_nonblocking(true).ok()?;
        Some(Notifier { socket, addr })
    }

    /// Sends `state` (e.g. `READY=1`); best effort.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            crate::warn!("cannot notify systemd ({state}): {e}");
        }
    }
}
