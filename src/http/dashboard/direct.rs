//! The event stream written straight to each page's socket, past actix's body per connection:
//! the thread's relay makes one `send` per page per frame, where actix woke each page's
//! connection task to poll its body, encode a chunk and flush it, most of what a page cost the
//! HTTP worker beyond the send itself (BENCHMARKS.md, run J).
//!
//! actix still owns the connection. The request comes through its handler, which stays pending
//! for as long as the page listens, so actix writes nothing on the connection meanwhile. Before
//! the first byte, [`handed_over`] makes sure that actix holds nothing unwritten for it either
//! (the tail of an earlier answer that a pipelining client has not read yet). Only then does the
//! page's head go out, written here, and the stream after it, which ends with the connection.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Bytes a page may fall behind by, unsent, before it is ended: it connects again and starts
/// over from the whole state, as a page that falls behind the hub does.
pub(crate) const BACKLOG_LIMIT: usize = 1 << 20;

/// How long [`handed_over`] waits for a connection's earlier answers to be written out.
const HANDOVER_LIMIT: Duration = Duration::from_secs(5);
/// How often it looks again meanwhile.
const HANDOVER_POLL: Duration = Duration::from_millis(20);

/// What the kernel holds to send on a TCP connection, from `TCP_INFO`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SendQueue {
    /// Nothing unsent, nothing sent and unacknowledged.
    empty: bool,
    /// Bytes acknowledged by the peer so far.
    acked: u64,
}

/// The send queue of TCP socket `socket`.
fn send_queue(socket: BorrowedFd<'_>) -> io::Result<SendQueue> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let size = std::mem::size_of::<libc::tcp_info>();
    let mut len = libc::socklen_t::try_from(size).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `info` is `len` writable bytes; the kernel writes at most `len` of them and says
    // how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed, then written in part by the kernel; `tcp_info` is integers only, and any
    // bit pattern is one.
    let info = unsafe { info.assume_init() };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_notsent_bytes) + 4;
    if usize::try_from(len).unwrap_or(0) < needed {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO has no tcpi_notsent_bytes (Linux before 4.6)",
        ));
    }
    Ok(SendQueue {
        empty: info.tcpi_unacked == 0 && info.tcpi_notsent_bytes == 0,
        acked: info.tcpi_bytes_acked,
    })
}

/// Waits until actix holds nothing unwritten for the connection of `socket`: true then, false
/// when its earlier answers are still not written out after [`HANDOVER_LIMIT`] (the caller
/// leaves the stream to actix).
///
/// Only for the request's handler, whose future the connection's dispatcher polls, then writes
/// out what it holds. So when the kernel's send queue is empty at one poll and is still the same
/// at the next, actix had nothing to write in between: an empty queue takes at least a byte of
/// anything written, which shows as unsent, in flight or acknowledged. And it writes nothing
/// more while the handler is pending.
pub(crate) async fn handed_over(socket: &std::net::TcpStream) -> io::Result<bool> {
    let deadline = Instant::now() + HANDOVER_LIMIT;
    loop {
        let before = send_queue(socket.as_fd())?;
        if before.empty {
            // Back to the dispatcher, which writes out what it holds, and polls this again.
            tokio::task::yield_now().await;
            if send_queue(socket.as_fd())? == before {
                return Ok(true);
            }
        } else if Instant::now() >= deadline {
            return Ok(false);
        } else {
            tokio::time::sleep(HANDOVER_POLL).await;
        }
    }
}

/// The head of the stream's answer, as actix would write it for the handler's headers plus the
/// security headers; the body is delimited by the connection's end, as HTTP/1.0 and 1.1 allow.
pub(crate) fn head() -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n",
    );
    for (name, value) in crate::http::SECURITY_HEADERS {
        // In lower case, as actix writes every name.
        head.push_str(&name.to_ascii_lowercase());
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("date: ");
    head.push_str(
        &chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    );
    head.push_str("\r\n\r\n");
    head.into_bytes()
}

/// A page whose stream is written straight to its socket.
#[derive(Debug)]
pub(crate) struct DirectPage {
    /// Written to with plain non-blocking writes: tokio's would not even try before its event
    /// loop has seen the socket ready, and a page that keeps up needs no event loop at all.
    socket: std::net::TcpStream,
    /// What the page was sent and its socket has not taken yet, in order; a drain task writes it
    /// as the socket takes it. Before [`DirectPage::begin`], the frames that came meanwhile.
    backlog: RefCell<Vec<u8>>,
    /// The head and the state are out: frames may follow.
    begun: Cell<bool>,
    /// A drain task is running.
    draining: Cell<bool>,
    ended: Cell<bool>,
    /// Tells the page's handler that the page ended.
    end: Notify,
}

impl DirectPage {
    /// A page on `socket`; it takes no frame until [`DirectPage::begin`].
    pub(crate) fn new(socket: std::net::TcpStream) -> io::Result<Rc<DirectPage>> {
        // The flag belongs to the socket, shared with actix's descriptor: it is set already.
        socket.set_nonblocking(true)?;
        Ok(Rc::new(DirectPage {
            socket,
            backlog: RefCell::new(Vec::new()),
            begun: Cell::new(false),
            draining: Cell::new(false),
            ended: Cell::new(false),
            end: Notify::new(),
        }))
    }

    /// Sends `first` (the head and the state), then the frames held since the page was made.
    pub(crate) fn begin(self: &Rc<Self>, first: &[u8]) {
        let held = std::mem::take(&mut *self.backlog.borrow_mut());
        self.begun.set(true);
        self.send(first);
        self.send(&held);
    }

    /// Sends `bytes` to the page: written at once as far as the socket takes them, the rest
    /// held for the drain task; a page over [`BACKLOG_LIMIT`] behind, or whose socket fails,
    /// ends.
    pub(crate) fn send(self: &Rc<Self>, bytes: &[u8]) {
        if self.ended.get() || bytes.is_empty() {
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        if !self.begun.get() || !backlog.is_empty() {
            if backlog.len() + bytes.len() > BACKLOG_LIMIT {
                drop(backlog);
                self.finish();
                return;
            }
            backlog.extend_from_slice(bytes);
            return;
        }
        let rest = match (&self.socket).write(bytes) {
            Ok(n) => &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
            Err(_) => {
                drop(backlog);
                self.finish();
                return;
            }
        };
        if !rest.is_empty() {
            backlog.extend_from_slice(rest);
            if !self.draining.replace(true) {
                actix_web::rt::spawn(Rc::clone(self).drain());
            }
        }
    }

    /// Writes the backlog out as the socket takes it, waiting on this thread's event loop for
    /// it to take more (with a descriptor registered for the while).
    async fn drain(self: Rc<Self>) {
        let waiter = self
            .socket
            .try_clone()
            .and_then(tokio::net::TcpStream::from_std);
        let Ok(waiter) = waiter else {
            self.finish();
            self.draining.set(false);
            return;
        };
        while !self.ended.get() {
            if waiter.writable().await.is_err() {
                self.finish();
                break;
            }
            let mut backlog = self.backlog.borrow_mut();
            match waiter.try_write(&backlog) {
                Ok(n) => {
                    backlog.drain(..n);
                    if backlog.is_empty() {
                        // Caught up: a page that once fell behind keeps no buffer of its size.
                        *backlog = Vec::new();
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    drop(backlog);
                    self.finish();
                    break;
                }
            }
        }
        self.draining.set(false);
    }

    /// Ends the page: its connection closes both ways (the page connects again, as EventSource
    /// does, and gets the whole state), and its handler is told.
    pub(crate) fn finish(&self) {
        if self.ended.replace(true) {
            return;
        }
        let _ = self.socket.shutdown(Shutdown::Both);
        self.backlog.borrow_mut().clear();
        self.end.notify_one();
    }

    /// Until the page ends.
    pub(crate) async fn ended_wait(&self) {
        if !self.ended.get() {
            self.end.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream as StdStream};

    /// Both ends of a loopback connection: the page's (as actix accepted it) and the reader's.
    fn connection() -> (std::net::TcpStream, StdStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (page, _) = listener.accept().unwrap();
        (page, reader)
    }

    /// Everything the reader gets until the page's end closes the connection.
    fn read_to_end(mut reader: StdStream) -> Vec<u8> {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        got
    }

    #[test]
    fn a_slow_reader_gets_the_head_and_every_frame_in_order() {
        actix_rt::System::new().block_on(async {
            let (socket, reader) = connection();
            // Loopback's buffers would take it all: these take a fraction.
            socket2::SockRef::from(&socket)
                .set_send_buffer_size(64 * 1024)
                .unwrap();
            assert!(handed_over(&socket).await.unwrap(), "nothing written yet");
            let page = DirectPage::new(socket).unwrap();
            // Held until the page begins, then after its first bytes.
            page.send(b"early;");
            let slow = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                read_to_end(reader)
            });
            page.begin(b"first;");
            // Far more than the socket takes at once: the rest waits for the drain.
            let frame = vec![b'x'; 64 * 1024];
            for _ in 0..12 {
                page.send(&frame);
            }
            assert!(!page.backlog.borrow().is_empty(), "the socket took it all");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !page.backlog.borrow().is_empty() {
                assert!(Instant::now() < deadline, "the backlog is not written out");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            page.finish();
            let got = slow.join().unwrap();
            let mut want = b"first;early;".to_vec();
            for _ in 0..12 {
                want.extend_from_slice(&frame);
            }
            assert_eq!(got.len(), want.len());
            assert!(got == want, "bytes out of order");
        });
    }

    #[test]
    fn a_page_that_stops_reading_ends_past_its_backlog_limit() {
        actix_rt::System::new().block_on(async {
            let (socket, reader) = connection();
            let page = DirectPage::new(socket).unwrap();
            page.begin(b"first;");
            let frame = vec![b'x'; 16 * 1024];
            let mut sent = 0;
            while !page.ended.get() {
                page.send(&frame);
                sent += frame.len();
                assert!(sent < 64 << 20, "never ended after {sent} bytes");
            }
            // What the socket took at once, and the backlog up to the limit, then no more.
            assert!(sent >= BACKLOG_LIMIT, "{sent}");
            page.ended_wait().await;
            let got = read_to_end(reader);
            assert!(
                got.starts_with(b"first;x"),
                "{:?}",
                String::from_utf8_lossy(&got[..got.len().min(40)])
            );
            assert!(got.len() < sent, "{} of {sent}", got.len());
        });
    }

    #[test]
    fn a_page_whose_reader_is_gone_ends_at_the_next_sends() {
        actix_rt::System::new().block_on(async {
            let (socket, reader) = connection();
            let page = DirectPage::new(socket).unwrap();
            page.begin(b"first;");
            drop(reader);
            // The first send after the close may still be taken (the peer then resets).
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                page.send(b"frame;");
            }
            assert!(page.ended.get());
            page.ended_wait().await;
        });
    }

    #[test]
    fn the_head_carries_the_security_headers_and_ends_with_a_blank_line() {
        let head = String::from_utf8(head()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        for (name, value) in crate::http::SECURITY_HEADERS {
            let line = format!("\r\n{}: {value}\r\n", name.to_ascii_lowercase());
            assert!(head.contains(&line), "{line:?} in {head}");
        }
        assert!(head.ends_with("GMT\r\n\r\n"), "{head}");
        assert_eq!(head.matches("\r\n\r\n").count(), 1);
    }
}
