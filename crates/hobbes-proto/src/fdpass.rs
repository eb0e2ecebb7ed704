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

/// Read one frame's payload and its descriptors, within `limits`.
///
/// Descriptors may ride on any byte of the frame; all are collected, and more
/// than [`MAX_FDS`] is [`FrameError::TooManyFds`]. On every error path the
/// descriptors received so far are closed (they are owned from the moment the
/// kernel installs them).
pub fn read_payload_with_fds_limited(
    stream: &UnixStream,
    limits: ReadLimits,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    let mut reader = LimitedReader::new(stream, limits);
    let mut got = 0;
    while got < HEADER_LEN {
        let n = reader.recv(&mut header[got..], &mut fds)?;
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
        let n = reader.recv(&mut chunk[..want], &mut fds)?;
        if n == 0 {
            return Err(FrameError::Malformed("truncated frame payload".into()));
        }
        payload.extend_from_slice(&chunk[..n]);
    }
    Ok((payload, fds))
}

/// `EMFILE`, without a libc dependency for one constant.
fn libc_emfile() -> i32 {
    rustix::io::Errno::MFILE.raw_os_error()
}

/// `recvmsg` with the deadlines of [`ReadLimits`]: the idle one until the
/// first byte, the frame one after it.
struct LimitedReader<'a> {
    stream: &'a UnixStream,
    limits: ReadLimits,
    /// Set when the first byte arrived.
    frame_deadline: Option<Instant>,
    started: bool,
}

impl<'a> LimitedReader<'a> {
    fn new(stream: &'a UnixStream, limits: ReadLimits) -> Self {
        LimitedReader {
            stream,
            limits,
            frame_deadline: None,
            started: false,
        }
    }

    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, FrameError> {
        loop {
            let timeout = if self.started {
                match self.frame_deadline {
                    Some(d) => Some(
                        d.checked_duration_since(Instant::now())
                            .filter(|left| !left.is_zero())
                            .ok_or(FrameError::Stalled(self.limits.frame.unwrap_or_default()))?,
                    ),
                    None => None,
                }
            } else {
                self.limits.idle
            };
            if self.limits != ReadLimits::default() {
                self.stream.set_read_timeout(timeout)?;
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(KERNEL_MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let result = recvmsg(
                self.stream,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            // Take ownership of whatever arrived before looking at the result;
            // dropping `control` would close them too.
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = msg {
                    fds.extend(received);
                }
            }
            if fds.len() > MAX_FDS {
                return Err(FrameError::TooManyFds {
                    got: fds.len(),
                    max: MAX_FDS,
                });
            }
            match result {
                Ok(msg) if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) => {
                    // Our buffer holds any SCM_RIGHTS message, so the kernel
                    // dropped descriptors because it could not install them:
                    // this process is out of descriptors.
                    return Err(FrameError::Io(std::io::Error::from_raw_os_error(
                        libc_emfile(),
                    )));
                }
                Ok(msg) => {
                    if msg.bytes > 0 && !self.started {
                        self.started = true;
                        self.frame_deadline = self.limits.frame.map(|d| Instant::now() + d);
                    }
                    return Ok(msg.bytes);
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) if self.started => {
                    return Err(FrameError::Stalled(self.limits.frame.unwrap_or_default()))
                }
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(FrameError::Idle(self.limits.idle.unwrap_or_default()))
                }
                Err(e) => return Err(FrameError::Io(e.into())),
            }
        }
    }
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
}
