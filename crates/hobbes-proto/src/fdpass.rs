//! Frames that carry file descriptors (`SCM_RIGHTS`), for XEMEM: an owner hands
//! its segment's memfd to the name server, which hands it (or a read-only
//! reopening of it) to permitted requesters.
//!
//! The descriptors ride on the first byte of the frame; a frame carries at most
//! [`MAX_FDS`]. Descriptors arrive close-on-exec.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{decode_header, decode_payload, encode, FrameError, HEADER_LEN};

/// Most descriptors one frame carries.
pub const MAX_FDS: usize = 4;

/// Write one frame with `fds` attached.
pub fn write_frame_with_fds<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    if fds.is_empty() {
        let mut s = stream;
        s.write_all(&frame)?;
        return Ok(());
    }
    if fds.len() > MAX_FDS {
        return Err(FrameError::Malformed(format!(
            "{} descriptors; a frame carries at most {MAX_FDS}",
            fds.len()
        )));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let sent = loop {
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    };
    let mut s = stream;
    s.write_all(&frame[sent..])?;
    Ok(())
}

/// Read one frame's payload and any descriptors that came with it.
pub fn read_payload_with_fds(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_LEN {
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (n, truncated) = {
            let mut iov = [IoSliceMut::new(&mut header[got..])];
            let msg = match recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(FrameError::Io(e.into())),
            };
            for c in msg.cmsgs().map_err(|e| FrameError::Io(e.into()))? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors in our
                    // table for us; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC))
        };
        if truncated {
            return Err(FrameError::Malformed(format!(
                "more than {MAX_FDS} descriptors attached to a frame"
            )));
        }
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
    let mut payload = vec![0u8; len];
    let mut s = stream;
    s.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Malformed("truncated frame payload".into())
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok((payload, fds))
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
}
