//! Frames that carry file descriptors (`SCM_RIGHTS`), for XEMEM: an owner hands
//! its segment's memfd to the name server, which hands it (or a read-only
//! reopening of it) to permitted requesters.
//!
//! The descriptors ride on the first byte of the frame; a frame carries at most
//! [`MAX_FDS`]. Descriptors arrive close-on-exec, and every descriptor a peer
//! attaches is owned (and closed on drop) whatever happens to the frame.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use rustix::io::Errno;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{decode_header, decode_payload, encode, FrameError, HEADER_LEN};

/// Most descriptors one frame carries.
pub const MAX_FDS: usize = 4;

/// Write one frame with `fds` attached (none is fine). Sent with
/// `MSG_NOSIGNAL`: a peer that hung up is an `EPIPE` error, never a `SIGPIPE`
/// that would kill a C program using the client library.
pub fn write_frame_with_fds<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    if fds.len() > MAX_FDS {
        return Err(FrameError::TooManyFds {
            got: fds.len(),
            max: MAX_FDS,
        });
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let mut sent = 0;
    while sent < frame.len() {
        // The descriptors ride on the first chunk only.
        let cmsg: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() {
            &rights
        } else {
            &[]
        };
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&frame[sent..])],
            cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    }
    Ok(())
}

/// Most descriptors the kernel puts in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
/// The receive buffer has room for this many, so the kernel never truncates the
/// control data: every descriptor a peer attaches reaches us as an [`OwnedFd`]
/// and is closed when dropped, however many there were.
const KERNEL_MAX_FDS: usize = 253;

/// How long a reader waits on its peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadLimits {
    /// For the first byte of a frame (`None`: forever). An idle client's
    /// connection is closed after this.
    pub idle: Option<Duration>,
    /// From the first byte of a frame to its last (`None`: forever), so a
    /// half-sent frame cannot hold the reader.
    pub frame: Option<Duration>,
}

/// Read one frame's payload and any descriptors that came with it.
pub fn read_payload_with_fds(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    read_payload_with_fds_limited(stream, ReadLimits::default())
}

/// Read one frame's payload and its descriptors, within `limits` (a fresh
/// [`FrameReader`] for one frame; a server reading many frames from one
/// connection keeps one reader, which saves setting the socket's timeout for
/// each).
pub fn read_payload_with_fds_limited(
    stream: &UnixStream,
    limits: ReadLimits,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    FrameReader::new(limits).read(stream)
}

/// Reads frames and their descriptors from one connection within
/// [`ReadLimits`]: the idle deadline until a frame's first byte, the frame
/// deadline from there to its last.
///
/// Descriptors may ride on any byte of a frame; all are collected, and more
/// than [`MAX_FDS`] is [`FrameError::TooManyFds`]. On every error path the
/// descriptors received so far are closed (they are owned from the moment the
/// kernel installs them).
///
/// The socket's receive timeout is set only when it must change: the idle
/// one stays set between frames, and the rest of a frame is read without
/// blocking first, so a request that arrives whole costs no extra system
/// call.
pub struct FrameReader {
    limits: ReadLimits,
    /// The receive timeout set on the socket (`None`: not known yet).
    timeout_set: Option<Option<Duration>>,
}

impl FrameReader {
    /// A reader within `limits`, for one connection (the socket's timeout it
    /// sets is remembered between frames).
    pub fn new(limits: ReadLimits) -> Self {
        FrameReader {
            limits,
            // No limits: the socket's default (no timeout) is right as it is.
            timeout_set: (limits == ReadLimits::default()).then_some(None),
        }
    }

    /// Read one frame's payload and the descriptors that came with it from
    /// `stream` (always the same connection).
    pub fn read(&mut self, stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
        let mut fds = Vec::new();
        let mut header = [0u8; HEADER_LEN];
        let mut frame = FrameDeadline::default();
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self.recv(stream, &mut header[got..], &mut fds, &mut frame)?;
            if n == 0 {
                return Err(if got == 0 {
                    FrameError::Closed
                } else {
                    FrameError::Malformed("truncated frame header".into())
                });
            }
            got += n;
        }
        let len = decode_header(&header)? as usize;
        // Grow the buffer as bytes arrive rather than trusting the length: a peer
        // that announces 4 MiB and sends nothing costs us nothing.
        let mut payload = Vec::with_capacity(len.min(64 << 10));
        let mut chunk = vec![0u8; len.min(64 << 10)];
        while payload.len() < len {
            let want = (len - payload.len()).min(chunk.len());
            let n = self.recv(stream, &mut chunk[..want], &mut fds, &mut frame)?;
            if n == 0 {
                return Err(FrameError::Malformed("truncated frame payload".into()));
            }
            payload.extend_from_slice(&chunk[..n]);
        }
        Ok((payload, fds))
    }

    fn set_timeout(
        &mut self,
        stream: &UnixStream,
        timeout: Option<Duration>,
    ) -> Result<(), FrameError> {
        if self.timeout_set != Some(timeout) {
            stream.set_read_timeout(timeout)?;
            self.timeout_set = Some(timeout);
        }
        Ok(())
    }

    /// One `recvmsg`: blocking until the idle deadline before the frame's
    /// first byte; after it, without blocking first, then until the frame
    /// deadline.
    fn recv(
        &mut self,
        stream: &UnixStream,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        frame: &mut FrameDeadline,
    ) -> Result<usize, FrameError> {
        let mut flags = RecvFlags::CMSG_CLOEXEC;
        if frame.started {
            flags |= RecvFlags::DONTWAIT;
        } else {
            self.set_timeout(stream, self.limits.idle)?;
        }
        loop {
            match recv_owning_fds(stream, buf, fds, flags) {
                Ok(n) => {
                    if n > 0 && !frame.started {
                        frame.started = true;
                        frame.deadline = self.limits.frame.map(|d| Instant::now() + d);
                    }
                    return Ok(n);
                }
                Err(Errno::INTR) => continue,
                Err(Errno::TOOMANYREFS) => {
                    return Err(FrameError::TooManyFds {
                        got: fds.len(),
                        max: MAX_FDS,
                    })
                }
                Err(Errno::AGAIN) if flags.contains(RecvFlags::DONTWAIT) => {
                    // The rest of the frame is not here yet: wait for it, but
                    // only until the frame's deadline.
                    let left = match frame.deadline {
                        Some(d) => Some(
                            d.checked_duration_since(Instant::now())
                                .filter(|left| !left.is_zero())
                                .ok_or(FrameError::Stalled(
                                    self.limits.frame.unwrap_or_default(),
                                ))?,
                        ),
                        None => None,
                    };
                    self.set_timeout(stream, left)?;
                    flags.remove(RecvFlags::DONTWAIT);
                }
                Err(Errno::AGAIN) if frame.started => {
                    return Err(FrameError::Stalled(self.limits.frame.unwrap_or_default()))
                }
                Err(Errno::AGAIN) => {
                    return Err(FrameError::Idle(self.limits.idle.unwrap_or_default()))
                }
                Err(Errno::MFILE) => {
                    return Err(FrameError::Io(std::io::Error::from_raw_os_error(
                        Errno::MFILE.raw_os_error(),
                    )))
                }
                Err(e) => return Err(FrameError::Io(e.into())),
            }
        }
    }
}

/// Where one frame's read stands.
#[derive(Default)]
struct FrameDeadline {
    /// Its first byte arrived.
    started: bool,
    /// When it must be complete (set at its first byte).
    deadline: Option<Instant>,
}

/// One `recvmsg`, every descriptor that came with it appended to `fds`
/// (owned: closed if dropped) before anything else is looked at. More than
/// [`MAX_FDS`] in all is an error; control data the kernel truncated means
/// descriptors were dropped for want of room in our table: `EMFILE`.
fn recv_owning_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    flags: RecvFlags,
) -> Result<usize, Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(KERNEL_MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let result = recvmsg(stream, &mut [IoSliceMut::new(buf)], &mut control, flags);
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let msg = result?;
    if fds.len() > MAX_FDS {
        return Err(Errno::TOOMANYREFS);
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        // Our buffer holds any SCM_RIGHTS message, so the kernel dropped
        // descriptors because it could not install them.
        return Err(Errno::MFILE);
    }
    Ok(msg.bytes)
}

/// Read and decode one frame with its descriptors.
pub fn read_frame_with_fds<T: DeserializeOwned>(
    stream: &UnixStream,
) -> Result<(T, Vec<OwnedFd>), FrameError> {
    let (payload, fds) = read_payload_with_fds(stream)?;
    Ok((decode_payload(&payload)?, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Request;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_travel_with_their_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        write_frame_with_fds(&a, &Request::Status, &[w.as_fd()]).unwrap();
        write_frame_with_fds(&a, &Request::ListEnclaves, &[]).unwrap();
        let (req, mut fds): (Request, _) = read_frame_with_fds(&b).unwrap();
        assert_eq!(req, Request::Status);
        assert_eq!(fds.len(), 1);
        // The received descriptor is the pipe's write end.
        let got = fds.pop().unwrap();
        nix::unistd::write(&got, b"x").unwrap();
        let mut buf = [0u8; 1];
        nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf, b"x");
        let (req, fds): (Request, _) = read_frame_with_fds(&b).unwrap();
        assert_eq!((req, fds.len()), (Request::ListEnclaves, 0));
        drop(a);
        assert!(matches!(
            read_frame_with_fds::<Request>(&b),
            Err(FrameError::Closed)
        ));
    }

    /// A frame with more descriptors than allowed is refused, and every one
    /// of them is closed: none stays in the receiver's table.
    #[test]
    fn excess_descriptors_are_all_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let copies: Vec<OwnedFd> = (0..6).map(|_| w.try_clone().unwrap()).collect();
        let raw: Vec<RawFd> = copies.iter().map(|f| f.as_raw_fd()).collect();
        let frame = encode(&Request::Status).unwrap();
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&frame[..1])],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        (&a).write_all(&frame[1..]).unwrap();
        let err = read_payload_with_fds(&b).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooManyFds {
                    got: 6,
                    max: MAX_FDS
                }
            ),
            "{err}"
        );
        // Only the receiver could still hold write ends now: EOF proves it closed them.
        drop(copies);
        drop(w);
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 0);
    }

    #[test]
    fn idle_and_stalled_peers_time_out() {
        let limits = ReadLimits {
            idle: Some(Duration::from_millis(30)),
            frame: Some(Duration::from_millis(30)),
        };
        let (a, b) = UnixStream::pair().unwrap();
        let err = read_payload_with_fds_limited(&b, limits).unwrap_err();
        assert!(matches!(err, FrameError::Idle(_)), "{err}");
        let frame = encode(&Request::Status).unwrap();
        (&a).write_all(&frame[..frame.len() - 1]).unwrap();
        let err = read_payload_with_fds_limited(&b, limits).unwrap_err();
        assert!(matches!(err, FrameError::Stalled(_)), "{err}");
    }

    #[test]
    fn limited_read_passes_whole_frames() {
        let limits = ReadLimits {
            idle: Some(Duration::from_secs(5)),
            frame: Some(Duration::from_secs(5)),
        };
        let (a, b) = UnixStream::pair().unwrap();
        write_frame_with_fds(&a, &Request::ListEnclaves, &[]).unwrap();
        let (payload, fds) = read_payload_with_fds_limited(&b, limits).unwrap();
        let req: Request = decode_payload(&payload).unwrap();
        assert_eq!((req, fds.len()), (Request::ListEnclaves, 0));
    }

    /// One reader for a connection: whole frames pass without touching the
    /// socket's timeout again, and a frame that stops half-way still times out.
    #[test]
    fn one_reader_many_frames_then_a_stalled_one() {
        let limits = ReadLimits {
            idle: Some(Duration::from_secs(5)),
            frame: Some(Duration::from_millis(30)),
        };
        let (a, b) = UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(limits);
        for _ in 0..3 {
            write_frame_with_fds(&a, &Request::Status, &[]).unwrap();
            let (payload, _) = reader.read(&b).unwrap();
            assert_eq!(
                decode_payload::<Request>(&payload).unwrap(),
                Request::Status
            );
        }
        let frame = encode(&Request::ListEnclaves).unwrap();
        (&a).write_all(&frame[..frame.len() - 1]).unwrap();
        let err = reader.read(&b).unwrap_err();
        assert!(matches!(err, FrameError::Stalled(_)), "{err}");
    }
}
