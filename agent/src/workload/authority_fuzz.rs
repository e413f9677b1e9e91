//! Fuzz-ish property tests of the `:authority` fix-up: it parses bytes any local user sends to
//! the agent's socket, before h2 does, so whatever arrives it must never panic, never lose or
//! reorder bytes it does not rewrite, and only ever produce well-formed frames.

#![cfg(test)]

use super::*;
use proptest::prelude::*;

const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs the fix-up over `input` delivered in the given chunk sizes (cycled); returns all output.
fn run(input: &[u8], chunks: &[usize]) -> Vec<u8> {
    let mut fix = AuthorityFix::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        fix.feed(chunk);
        // Take only part of the output now and then, as a slow reader would.
        let ready = fix.output().len();
        out.extend_from_slice(&fix.output()[..ready / 2]);
        fix.consume(ready / 2);
        rest = tail;
    }
    fix.finish();
    out.extend_from_slice(fix.output());
    let n = fix.output().len();
    fix.consume(n);
    assert!(fix.output().is_empty());
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A parsed frame: type, flags, stream id, payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// Splits a byte stream (after the preface) into frames.
fn frames(mut bytes: &[u8]) -> Option<Vec<Frame>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let head = bytes.get(..FRAME_HEADER_LEN)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        let payload = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)?;
        out.push((head[3], head[4], stream, payload.to_vec()));
        bytes = &bytes[FRAME_HEADER_LEN + len..];
    }
    Some(out)
}

/// A header block of plain (non-Huffman) literal fields, `:authority` among them.
fn block(authority: &[u8], others: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0x83]; // :method POST, indexed
    b.push(0x41); // :authority (static 1), literal with incremental indexing
    encode_int(&mut b, authority.len(), 7, 0);
    b.extend_from_slice(authority);
    for (name, value) in others {
        b.push(0x00); // literal without indexing, new name
        encode_int(&mut b, name.len(), 7, 0);
        b.extend_from_slice(name);
        encode_int(&mut b, value.len(), 7, 0);
        b.extend_from_slice(value);
    }
    b
}

/// The literal fields of a block built like [`block`]: (name or index, value).
fn fields(mut b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while let Some(&first) = b.first() {
        if first & 0x80 != 0 {
            let (_, n) = decode_int(b, 7)?;
            b = &b[n..];
            continue;
        }
        let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
        let (index, n) = decode_int(b, prefix)?;
        b = &b[n..];
        let name = if index == 0 {
            let (name, n) = read_string(b)?;
            b = &b[n..];
            name
        } else {
            format!("#{index}").into_bytes()
        };
        let (value, n) = read_string(b)?;
        b = &b[n..];
        out.push((name, value));
    }
    Some(out)
}

fn other_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0u8), Just(3), Just(4), Just(6), Just(8), any::<u8>()],
        any::<u8>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_filter("not a header frame", |(k, ..)| {
            *k != TYPE_HEADERS && *k != TYPE_CONTINUATION
        })
        .prop_map(|(k, flags, stream, payload)| frame(k, flags, stream, &payload))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, in arbitrary pieces: no panic, and the result does not depend on how
    /// the bytes were split into reads.
    #[test]
    fn arbitrary_bytes_never_panic_and_reads_do_not_matter(
        with_preface in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let mut input = Vec::new();
        if with_preface {
            input.extend_from_slice(PREFACE);
        }
        input.extend_from_slice(&body);
        let whole = run(&input, &[input.len().max(1)]);
        let pieces = run(&input, &chunks);
        prop_assert_eq!(&whole, &pieces);
    }

    /// A connection without header frames passes through byte for byte.
    #[test]
    fn other_frames_pass_through_unchanged(
        frames_in in proptest::collection::vec(other_frame(), 0..12),
        chunks in proptest::collection::vec(1usize..64, 1..6),
    ) {
        let mut input = PREFACE.to_vec();
        for f in &frames_in {
            input.extend_from_slice(f);
        }
        prop_assert_eq!(run(&input, &chunks), input);
    }

    /// Header blocks with arbitrary `:authority` values, between other frames: every frame
    /// comes out well-formed and in order, other fields are untouched, and each authority keeps
    /// its length and comes out valid (or unchanged if it was valid already).
    #[test]
    fn authorities_are_fixed_in_place(
        authorities in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..120), 1..4),
        others in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 0..40)),
            0..3,
        ),
        filler in proptest::collection::vec(other_frame(), 0..3),
        chunks in proptest::collection::vec(1usize..100, 1..6),
    ) {
        let mut input = PREFACE.to_vec();
        for (i, authority) in authorities.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            input.extend_from_slice(&frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                stream,
                &block(authority, &others),
            ));
            for f in &filler {
                input.extend_from_slice(f);
            }
        }
        let out = run(&input, &chunks);
        prop_assert_eq!(&out[..PREFACE_LEN], &PREFACE[..]);
        let got = frames(&out[PREFACE_LEN..]).expect("well-formed frames");
        let sent = frames(&input[PREFACE_LEN..]).expect("well-formed input");
        prop_assert_eq!(got.len(), sent.len());
        let mut headers = 0;
        for (g, s) in got.iter().zip(&sent) {
            prop_assert_eq!((g.0, g.1, g.2), (s.0, s.1, s.2));
            if g.0 != TYPE_HEADERS {
                prop_assert_eq!(&g.3, &s.3);
                continue;
            }
            let before = authorities[headers].clone();
            headers += 1;
            let got_fields = fields(&g.3).expect("decodable block");
            let sent_fields = fields(&s.3).expect("decodable input");
            prop_assert_eq!(got_fields.len(), sent_fields.len());
            let after = &got_fields[0].1;
            prop_assert_eq!(after.len(), before.len());
            let valid = |v: &[u8]| tonic::codegen::http::uri::Authority::try_from(v).is_ok();
            if valid(&before) {
                prop_assert_eq!(after, &before);
            } else {
                prop_assert!(valid(after), "{:?} -> {:?}", before, after);
            }
            prop_assert_eq!(&got_fields[1..], &sent_fields[1..]);
        }
    }

    /// The block rewriter and the HPACK primitives on arbitrary input: no panic, and a
    /// rewritten block needs no second rewrite.
    #[test]
    fn hpack_primitives_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(fixed) = rewrite_block(&bytes) {
            prop_assert_eq!(rewrite_block(&fixed), None);
        }
        let _ = huffman_decode(&bytes);
        for prefix in 1..=8 {
            let _ = decode_int(&bytes, prefix);
        }
        let _ = read_string(&bytes);
    }

    /// HPACK integers round-trip for every prefix width.
    #[test]
    fn integers_round_trip(value in 0usize..(1 << 28), prefix in 1u8..=8, flags in any::<u8>()) {
        let mut buf = Vec::new();
        let flags = flags & !(((1u16 << prefix) - 1) as u8);
        encode_int(&mut buf, value, prefix, flags);
        prop_assert_eq!(decode_int(&buf, prefix), Some((value, buf.len())));
    }
}
