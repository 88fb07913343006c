//! `http::rewind::Rewind`: any interleaving of reads (of any buffer size) and
//! `put_back`s reads the bytes a plain queue model says, in order.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use crate::http::rewind::Rewind;

/// A socket stand-in: hands out its bytes at most `chunks[i]` at a time (cycling, as a
/// network delivers segments), then end of stream.
struct Source {
    data: VecDeque<u8>,
    chunks: Vec<usize>,
    reads: usize,
}

impl AsyncRead for Source {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let chunk = this.chunks[this.reads % this.chunks.len()];
        this.reads += 1;
        let n = chunk.min(buf.remaining()).min(this.data.len());
        let taken: Vec<u8> = this.data.drain(..n).collect();
        buf.put_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Read into a buffer of this size.
    Read(usize),
    /// Put back the last `n` bytes read and not yet put back (as hyper hands back what
    /// it read ahead and did not consume), at most as many as there are.
    PutBackRead(usize),
    /// Put back bytes never read (the property holds for any bytes).
    PutBackNew(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..24).prop_map(Op::Read),
        3 => (0usize..24).prop_map(Op::PutBackRead),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Op::PutBackNew),
    ]
}

/// The reference: a queue of put-back bytes in front of the stream's queue.
struct Model {
    front: VecDeque<u8>,
    back: VecDeque<u8>,
    chunks: Vec<usize>,
    back_reads: usize,
}

impl Model {
    /// What a read into a buffer of `size` bytes returns: put-back bytes while there are
    /// any (never mixed with the stream's), else the stream's next chunk.
    fn read(&mut self, size: usize) -> Vec<u8> {
        if !self.front.is_empty() {
            let n = size.min(self.front.len());
            return self.front.drain(..n).collect();
        }
        let chunk = self.chunks[self.back_reads % self.chunks.len()];
        self.back_reads += 1;
        let n = chunk.min(size).min(self.back.len());
        self.back.drain(..n).collect()
    }
}

fn read_once<T: AsyncRead + Unpin>(r: &mut T, size: usize) -> Vec<u8> {
    let mut storage = vec![0u8; size];
    let mut buf = ReadBuf::new(&mut storage);
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(r).poll_read(&mut cx, &mut buf) {
        Poll::Ready(Ok(())) => buf.filled().to_vec(),
        // The source never waits nor fails.
        other => panic!("read: {other:?}"),
    }
}

proptest! {
    #![proptest_config(super::config())]

    /// The model: bytes put back in front of a queue, the stream behind it. A read
    /// takes from what was put back first, never more than the buffer holds, and only
    /// then from the stream; `has_prefix` tells whether put-back bytes are unread.
    #[test]
    fn reads_and_put_backs_follow_a_queue(
        stream in prop::collection::vec(any::<u8>(), 0..64),
        chunks in prop::collection::vec(1usize..16, 1..4),
        ops in prop::collection::vec(op(), 0..40),
    ) {
        let mut r = Rewind::new(Source { data: stream.iter().copied().collect(), chunks: chunks.clone(), reads: 0 });
        let mut model = Model { front: VecDeque::new(), back: stream.iter().copied().collect(), chunks, back_reads: 0 };
        // Read and not put back since, oldest first.
        let mut consumed: Vec<u8> = Vec::new();
        let mut put_back = 0usize;
        let mut read = 0usize;
        for op in ops {
            let bytes = match op {
                Op::Read(size) => {
                    let got = read_once(&mut r, size);
                    prop_assert_eq!(&got, &model.read(size));
                    consumed.extend_from_slice(&got);
                    read += got.len();
                    None
                }
                Op::PutBackRead(n) => {
                    let n = n.min(consumed.len());
                    Some(consumed.split_off(consumed.len() - n))
                }
                Op::PutBackNew(bytes) => Some(bytes),
            };
            if let Some(bytes) = bytes {
                for &b in bytes.iter().rev() {
                    model.front.push_front(b);
                }
                put_back += bytes.len();
                r.put_back(Bytes::from(bytes));
            }
            prop_assert_eq!(r.has_prefix(), !model.front.is_empty());
        }
        // The rest reads as the model says too, up to the end of the stream.
        loop {
            let got = read_once(&mut r, 7);
            prop_assert_eq!(&got, &model.read(7));
            read += got.len();
            if got.is_empty() && model.front.is_empty() && model.back.is_empty() {
                break;
            }
        }
        // Nothing lost, nothing made up.
        prop_assert_eq!(read, stream.len() + put_back);
        prop_assert!(!r.has_prefix());
    }
}
