//! The Workload API's connections: each accepted stream carries its peer's credentials,
//! captured at accept time (what they prove is the attestation crate's business: see
//! [`PeerInfo`]), and reads through [`AuthorityFix`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sigil_workload_attestation::PeerInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::authority::AuthorityFix;

/// A Workload API connection with its peer's credentials.
#[derive(Debug)]
pub struct PeerStream {
    io: UnixStream,
    info: PeerInfo,
    fix: AuthorityFix,
    eof: bool,
}

// === impl PeerStream ===

impl PeerStream {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    /// Reads from the client through [`AuthorityFix`], so that h2 accepts gRPC clients that send
    /// the socket path as `:authority`.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.fix.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.fix.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                this.fix.finish();
            } else {
                this.fix.feed(rb.filled());
            }
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections and captures each peer's credentials right away, before the peer has a
/// chance to exit. The returned channel feeds tonic's `serve_with_incoming`.
pub fn accept_loop(listener: UnixListener) -> mpsc::Receiver<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((io, _)) => match PeerInfo::from_socket(&io) {
                    Ok(info) => {
                        let stream = PeerStream {
                            io,
                            info,
                            fix: AuthorityFix::new(),
                            eof: false,
                        };
                        if tx.send(Ok(stream)).await.is_err() {
                            return;
                        }
                    }
                    // Without credentials nothing can be attested: drop the connection.
                    Err(error) => tracing::warn!(%error, "reading workload peer credentials"),
                },
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accepting a workload API connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    rx
}
