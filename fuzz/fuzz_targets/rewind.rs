//! Any program of reads (buffer sizes) and put-backs on a `Rewind` over a stream: the
//! bytes read are the ones a queue model gives, in order, none lost. The same property
//! runs as a proptest on stable (`crates/proxy/src/proptests/rewind.rs`).
#![no_main]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidegate_proxy::http::rewind::Rewind;
use tokio::io::{AsyncRead, ReadBuf};

/// A stream that hands out at most `chunk` bytes per read, then end of stream.
struct Source {
    data: VecDeque<u8>,
    chunk: usize,
}

impl AsyncRead for Source {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.chunk.min(buf.remaining()).min(this.data.len());
        let taken: Vec<u8> = this.data.drain(..n).collect();
        buf.put_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

fn read(r: &mut Rewind<Source>, size: usize) -> Vec<u8> {
    let mut storage = vec![0u8; size];
    let mut buf = ReadBuf::new(&mut storage);
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(r).poll_read(&mut cx, &mut buf) {
        Poll::Ready(Ok(())) => buf.filled().to_vec(),
        other => panic!("{other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // [chunk, stream length, stream..., program...]; each program byte: a read of
    // `b >> 1` bytes (even) or a put-back of the last `b >> 1` bytes read (odd).
    let [chunk, len, rest @ ..] = data else {
        return;
    };
    let len = (*len as usize).min(rest.len());
    let (stream, program) = rest.split_at(len);
    let chunk = (*chunk as usize).max(1);
    let mut r = Rewind::new(Source {
        data: stream.iter().copied().collect(),
        chunk,
    });
    let mut front: VecDeque<u8> = VecDeque::new();
    let mut back: VecDeque<u8> = stream.iter().copied().collect();
    let mut consumed: Vec<u8> = Vec::new();
    let model_read = |front: &mut VecDeque<u8>, back: &mut VecDeque<u8>, size: usize| -> Vec<u8> {
        if !front.is_empty() {
            let n = size.min(front.len());
            front.drain(..n).collect()
        } else {
            let n = chunk.min(size).min(back.len());
            back.drain(..n).collect()
        }
    };
    for &op in program {
        let n = (op >> 1) as usize;
        if op & 1 == 0 {
            let got = read(&mut r, n);
            assert_eq!(got, model_read(&mut front, &mut back, n));
            consumed.extend_from_slice(&got);
        } else {
            let n = n.min(consumed.len());
            let bytes = consumed.split_off(consumed.len() - n);
            for &b in bytes.iter().rev() {
                front.push_front(b);
            }
            r.put_back(Bytes::from(bytes));
        }
        assert_eq!(r.has_prefix(), !front.is_empty());
    }
    loop {
        let got = read(&mut r, 64);
        assert_eq!(got, model_read(&mut front, &mut back, 64));
        if got.is_empty() && front.is_empty() && back.is_empty() {
            break;
        }
    }
});
