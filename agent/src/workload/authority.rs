//! Interoperability fix-up for gRPC clients that send a Unix socket path as `:authority`.
//!
//! gRPC C-core (Python, C++, Ruby, PHP clients) since 1.57, grpc-java and others set `:authority`
//! on Unix-socket channels to the socket path, percent-encoded (`tmp%2Fsock%2Fapi.sock`) or not.
//! That is not a valid HTTP/2 authority, and h2 (under tonic) answers such requests with
//! RST_STREAM(PROTOCOL_ERROR) before they reach us, while Go's gRPC server (SPIRE) lets them
//! through. So py-spiffe and java-spiffe could not talk to the agent.
//!
//! The authority means nothing on a Unix socket, so before h2 sees the client's bytes we replace
//! an invalid `:authority` value with a valid one of the *same length*: HPACK's dynamic table
//! accounts entries by length, so the client's table and h2's stay in step, and later requests
//! that refer to the entry by index decode to the valid value too. Only HEADERS/CONTINUATION
//! frames are touched (re-framed when a block changes); everything else passes through
//! unchanged, and anything unexpected disables the fix-up for the connection rather than risk
//! corrupting it (h2 then judges the original bytes).

use std::sync::OnceLock;

/// The HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value, which the agent's h2 server keeps: the largest frame
/// the fix-up may emit.
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are passed through untouched (h2 limits them far below).
const MAX_BLOCK: usize = 1 << 20;
/// `:authority`'s index in the HPACK static table.
const AUTHORITY_INDEX: usize = 1;

/// Rewrites the client-to-server byte stream of one connection. Feed it what was read from the
/// socket; take what h2 should read.
#[derive(Debug)]
pub struct AuthorityFix {
    preface_left: usize,
    input: Vec<u8>,
    output: Vec<u8>,
    output_pos: usize,
    /// Payload bytes of a pass-through frame still to copy.
    passthrough: usize,
    pending: Option<PendingBlock>,
    disabled: bool,
}

/// A header block spread over HEADERS + CONTINUATION frames, awaiting END_HEADERS.
#[derive(Debug)]
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as received, to emit unchanged if the block needs no change.
    raw: Vec<u8>,
}

/// RFC 7541 Appendix B: the HPACK Huffman code length of each byte value (EOS is 30 bits). The
/// code is canonical, so the lengths alone define it.
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0..15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16..31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32..47
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48..63
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64..79
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80..95
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96..111
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112..127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128..143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144..159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160..175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176..191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192..207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208..223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224..239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240..255
];
const EOS_LEN: u8 = 30;

/// Canonical-code decoding tables, per code length.
struct Huffman {
    first_code: [u32; 31],
    first_index: [usize; 31],
    count: [u32; 31],
    symbols: [u16; 257],
}

// === impl AuthorityFix ===

impl Default for AuthorityFix {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityFix {
    pub fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            passthrough: 0,
            pending: None,
            disabled: false,
        }
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// The client closed its side: whatever is buffered goes out as received.
    pub fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            self.output.extend_from_slice(&p.raw);
        }
        self.output.append(&mut self.input);
    }

    /// Bytes ready for h2.
    pub fn output(&self) -> &[u8] {
        &self.output[self.output_pos..]
    }

    /// Marks `n` output bytes as handed over.
    pub fn consume(&mut self, n: usize) {
        self.output_pos += n;
        if self.output_pos >= self.output.len() {
            self.output.clear();
            self.output_pos = 0;
        }
    }

    fn process(&mut self) {
        let mut pos = 0;
        let input = std::mem::take(&mut self.input);
        loop {
            let rest = &input[pos..];
            if rest.is_empty() {
                break;
            }
            if self.disabled {
                self.output.extend_from_slice(rest);
                pos = input.len();
                break;
            }
            if self.preface_left > 0 {
                let n = self.preface_left.min(rest.len());
                self.output.extend_from_slice(&rest[..n]);
                self.preface_left -= n;
                pos += n;
                continue;
            }
            if self.passthrough > 0 {
                let n = self.passthrough.min(rest.len());
                self.output.extend_from_slice(&rest[..n]);
                self.passthrough -= n;
                pos += n;
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN {
                break;
            }
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let kind = rest[3];
            if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                if self.pending.is_some() {
                    // Another frame inside a header block is a protocol error: let h2 see it.
                    self.give_up();
                    continue;
                }
                self.output.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
                self.passthrough = len;
                pos += FRAME_HEADER_LEN;
                continue;
            }
            if len > MAX_BLOCK {
                self.give_up();
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = &rest[..FRAME_HEADER_LEN + len];
            pos += frame.len();
            if !self.header_frame(frame) {
                // Whatever was pending precedes this frame on the wire.
                self.give_up();
                self.output.extend_from_slice(frame);
            }
        }
        self.input = input[pos..].to_vec();
    }

    /// Handles a complete HEADERS or CONTINUATION frame; `false` if it is not understood (the
    /// caller then passes it on as is and stops fixing this connection).
    fn header_frame(&mut self, frame: &[u8]) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            TYPE_HEADERS => {
                if self.pending.is_some() {
                    return false;
                }
                let mut start = 0;
                let mut end = payload.len();
                if flags & FLAG_PADDED != 0 {
                    let Some(&pad) = payload.first() else {
                        return false;
                    };
                    start = 1;
                    end = match end.checked_sub(usize::from(pad)) {
                        Some(e) if e >= start => e,
                        _ => return false,
                    };
                }
                let priority = if flags & FLAG_PRIORITY != 0 {
                    let Some(p) = payload.get(start..start + 5) else {
                        return false;
                    };
                    start += 5;
                    let mut buf = [0u8; 5];
                    buf.copy_from_slice(p);
                    Some(buf)
                } else {
                    None
                };
                let Some(fragment) = payload.get(start..end) else {
                    return false;
                };
                let block = PendingBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                    raw: frame.to_vec(),
                };
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(block);
                } else {
                    self.pending = Some(block);
                }
                true
            }
            _ => {
                let Some(mut block) = self.pending.take() else {
                    return false;
                };
                if block.stream_id != stream_id || block.block.len() + payload.len() > MAX_BLOCK {
                    self.output.extend_from_slice(&block.raw);
                    return false;
                }
                block.block.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(block);
                } else {
                    self.pending = Some(block);
                }
                true
            }
        }
    }

    /// Emits a complete header block, rewritten if it carries an invalid authority.
    fn emit(&mut self, p: PendingBlock) {
        let Some(block) = rewrite_block(&p.block) else {
            self.output.extend_from_slice(&p.raw);
            return;
        };
        let mut rest: &[u8] = &block;
        let mut first = true;
        loop {
            let room = if first && p.priority.is_some() {
                MAX_FRAME - 5
            } else {
                MAX_FRAME
            };
            let n = room.min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            let last = tail.is_empty();
            let mut flags = 0;
            if last {
                flags |= FLAG_END_HEADERS;
            }
            let (kind, prio) = if first {
                if p.end_stream {
                    flags |= FLAG_END_STREAM;
                }
                if p.priority.is_some() {
                    flags |= FLAG_PRIORITY;
                }
                (TYPE_HEADERS, p.priority)
            } else {
                (TYPE_CONTINUATION, None)
            };
            let len = chunk.len() + prio.map_or(0, |_| 5);
            // Invariant: len <= MAX_FRAME < 2^24, so three bytes hold it.
            self.output.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.output.extend_from_slice(&p.stream_id.to_be_bytes());
            if let Some(prio) = prio {
                self.output.extend_from_slice(&prio);
            }
            self.output.extend_from_slice(chunk);
            if last {
                break;
            }
            rest = tail;
            first = false;
        }
    }

    fn give_up(&mut self) {
        if let Some(p) = self.pending.take() {
            self.output.extend_from_slice(&p.raw);
        }
        self.disabled = true;
    }
}

/// Rewrites every `:authority` field of an HPACK header block whose value is not a valid
/// authority. `None` when nothing needs changing (or the block cannot be parsed, which h2 will
/// report itself).
pub fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 8);
    let mut changed = false;
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        let start = i;
        let prefix = if b & 0x80 != 0 {
            // Indexed field: nothing to rewrite (a dynamic entry already holds a fixed value).
            let (_, n) = decode_int(&block[i..], 7)?;
            i += n;
            out.extend_from_slice(&block[start..i]);
            continue;
        } else if b & 0xc0 == 0x40 {
            6
        } else if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            let (_, n) = decode_int(&block[i..], 5)?;
            i += n;
            out.extend_from_slice(&block[start..i]);
            continue;
        } else {
            4
        };
        // A literal field: name (index or literal), then the value string.
        let (index, n) = decode_int(&block[i..], prefix)?;
        i += n;
        let is_authority = if index == 0 {
            let (name, n) = read_string(&block[i..])?;
            i += n;
            name == b":authority"
        } else {
            index == AUTHORITY_INDEX
        };
        let value_start = i;
        let (value, n) = read_string(&block[i..])?;
        i += n;
        out.extend_from_slice(&block[start..value_start]);
        match is_authority.then(|| fixed_authority(&value)).flatten() {
            Some(fixed) => {
                encode_int(&mut out, fixed.len(), 7, 0x00);
                out.extend_from_slice(&fixed);
                changed = true;
            }
            None => out.extend_from_slice(&block[value_start..i]),
        }
    }
    changed.then_some(out)
}

/// A valid authority of the same length as `value`, if `value` is not one.
fn fixed_authority(value: &[u8]) -> Option<Vec<u8>> {
    use tonic::codegen::http::uri::Authority;
    if value.is_empty() || Authority::try_from(value).is_ok() {
        return None;
    }
    // Keep it recognizable in logs: letters, digits, dots and dashes survive.
    let fixed: Vec<u8> = value
        .iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || c == b'.' || c == b'-' {
                c
            } else {
                b'-'
            }
        })
        .collect();
    if Authority::try_from(fixed.as_slice()).is_ok() {
        Some(fixed)
    } else {
        Some(vec![b'x'; value.len()])
    }
}

/// RFC 7541 §5.1 integer with an N-bit prefix: (value, bytes used).
fn decode_int(src: &[u8], prefix_bits: u8) -> Option<(usize, usize)> {
    let mask = (1usize << prefix_bits) - 1;
    let first = usize::from(*src.first()?) & mask;
    if first < mask {
        return Some((first, 1));
    }
    let mut value = mask;
    let mut shift = 0;
    for (k, &b) in src.iter().enumerate().skip(1) {
        // Five continuation bytes exceed anything a sane peer sends (and 32 bits).
        if k > 5 {
            return None;
        }
        value = value.checked_add(usize::from(b & 0x7f) << shift)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Some((value, k + 1));
        }
    }
    None
}

fn encode_int(dst: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_byte_flags: u8) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        dst.push(first_byte_flags | value as u8);
        return;
    }
    dst.push(first_byte_flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        dst.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

/// RFC 7541 §5.2 string literal: (decoded bytes, bytes used).
fn read_string(src: &[u8]) -> Option<(Vec<u8>, usize)> {
    let huffman = *src.first()? & 0x80 != 0;
    let (len, n) = decode_int(src, 7)?;
    let data = src.get(n..n.checked_add(len)?)?;
    let decoded = if huffman {
        huffman_decode(data)?
    } else {
        data.to_vec()
    };
    Some((decoded, n + len))
}

fn huffman() -> &'static Huffman {
    static TABLE: OnceLock<Huffman> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut h = Huffman {
            first_code: [0; 31],
            first_index: [0; 31],
            count: [0; 31],
            symbols: [0; 257],
        };
        let len_of = |sym: usize| CODE_LENGTHS.get(sym).copied().unwrap_or(EOS_LEN);
        let mut code = 0u32;
        let mut index = 0;
        for len in 1..=30u8 {
            h.first_code[usize::from(len)] = code;
            h.first_index[usize::from(len)] = index;
            for sym in 0..257 {
                if len_of(sym) == len {
                    h.symbols[index] = sym as u16;
                    index += 1;
                    code += 1;
                    h.count[usize::from(len)] += 1;
                }
            }
            code <<= 1;
        }
        h
    })
}

/// Decodes an HPACK Huffman string; `None` if malformed (EOS inside, bad padding).
pub fn huffman_decode(src: &[u8]) -> Option<Vec<u8>> {
    let h = huffman();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in src {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return None;
            }
            let offset = code.wrapping_sub(h.first_code[len]);
            if code >= h.first_code[len] && offset < h.count[len] {
                let sym = h.symbols[h.first_index[len] + offset as usize];
                if sym == 256 {
                    return None;
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    (len < 8 && code == (1u32 << len) - 1).then_some(out)
}

#[cfg(test)]
#[path = "authority_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn huffman_rfc7541_vectors() {
        // RFC 7541 C.4.1-C.4.3.
        assert_eq!(
            huffman_decode(&unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")).unwrap(),
            b"www.example.com"
        );
        assert_eq!(
            huffman_decode(&unhex("a8eb 1064 9cbf")).unwrap(),
            b"no-cache"
        );
        assert_eq!(
            huffman_decode(&unhex("25a8 49e9 5ba9 7d7f")).unwrap(),
            b"custom-key"
        );
        assert_eq!(
            huffman_decode(&unhex("25a8 49e9 5bb8 e8b4 bf")).unwrap(),
            b"custom-value"
        );
        // Padding longer than 7 bits is an error.
        assert!(huffman_decode(&unhex("ff ff")).is_none());
    }

    #[test]
    fn integers() {
        let mut v = Vec::new();
        encode_int(&mut v, 1337, 5, 0);
        // RFC 7541 C.1.2.
        assert_eq!(v, [0x1f, 0x9a, 0x0a]);
        assert_eq!(decode_int(&v, 5), Some((1337, 3)));
        assert_eq!(decode_int(&[0x0a], 5), Some((10, 1)));
    }

    /// A request block as gRPC C-core sends it on a Unix socket: static-name literals with
    /// incremental indexing, the authority Huffman-coded or raw.
    fn grpc_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x41); // literal, incremental indexing, name = static 1 (:authority)
        encode_int(&mut b, authority.len(), 7, 0);
        b.extend_from_slice(authority);
        b.push(0x44); // :path, literal value
        encode_int(&mut b, 4, 7, 0);
        b.extend_from_slice(b"/A/B");
        b
    }

    #[test]
    fn invalid_authority_is_replaced_with_same_length() {
        let fixed = rewrite_block(&grpc_block(b"tmp%2Fsg%2Fapi.sock")).unwrap();
        assert_eq!(fixed, grpc_block(b"tmp-2Fsg-2Fapi.sock"));
        let fixed = rewrite_block(&grpc_block(b"/run/spire/api.sock")).unwrap();
        assert_eq!(fixed, grpc_block(b"-run-spire-api.sock"));
        // Valid authorities are left alone.
        assert!(rewrite_block(&grpc_block(b"localhost")).is_none());
        // Huffman-coded invalid authority ("www.example.com" is valid; build an invalid one by
        // hand is impractical, so check the valid Huffman one is kept and parsed).
        let mut b = vec![0x41];
        let h = unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff");
        encode_int(&mut b, h.len(), 7, 0x80);
        b.extend_from_slice(&h);
        assert!(rewrite_block(&b).is_none());
    }

    /// Canonical Huffman encoding with the same table, for building test inputs.
    fn huffman_encode(src: &[u8]) -> Vec<u8> {
        let h = huffman();
        let code_of = |sym: u16| -> (u64, usize) {
            let pos = h.symbols.iter().position(|&s| s == sym).unwrap();
            let len = (1..=30)
                .rev()
                .find(|&l| h.count[l] > 0 && h.first_index[l] <= pos)
                .unwrap();
            (
                u64::from(h.first_code[len]) + (pos - h.first_index[len]) as u64,
                len,
            )
        };
        let (mut acc, mut bits, mut out) = (0u64, 0usize, Vec::new());
        for &b in src {
            let (code, len) = code_of(u16::from(b));
            acc = (acc << len) | code;
            bits += len;
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn huffman_coded_invalid_authority_is_replaced() {
        assert_eq!(
            huffman_encode(b"www.example.com"),
            unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
        );
        let coded = huffman_encode(b"%2Frun%2Fapi.sock");
        assert_eq!(huffman_decode(&coded).unwrap(), b"%2Frun%2Fapi.sock");
        let mut block = vec![0x82, 0x41];
        encode_int(&mut block, coded.len(), 7, 0x80);
        block.extend_from_slice(&coded);
        let fixed = rewrite_block(&block).unwrap();
        let mut expected = vec![0x82, 0x41];
        encode_int(&mut expected, 17, 7, 0);
        expected.extend_from_slice(b"-2Frun-2Fapi.sock");
        assert_eq!(fixed, expected);
        // Same decoded length: HPACK table accounting is unchanged.
        assert_eq!(b"-2Frun-2Fapi.sock".len(), b"%2Frun%2Fapi.sock".len());
        // A literal (raw) ":authority" name is recognized too.
        let mut block = vec![0x40, 10];
        block.extend_from_slice(b":authority");
        block.push(3);
        block.extend_from_slice(b"a/b");
        let fixed = rewrite_block(&block).unwrap();
        assert_eq!(&fixed[12..], &[3, b'a', b'-', b'b']);
    }

    #[test]
    fn frames_are_rewritten_and_others_pass_through() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let block = grpc_block(b"tmp%2Fsock");
        let mut headers = vec![
            0,
            0,
            block.len() as u8,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
        ];
        headers.extend_from_slice(&block);
        let data = [0u8, 0, 2, 0, FLAG_END_STREAM, 0, 0, 0, 1, 0xaa, 0xbb];
        let mut input = preface.to_vec();
        input.extend_from_slice(&settings);
        input.extend_from_slice(&headers);
        input.extend_from_slice(&data);

        // Byte by byte, to exercise partial frames.
        let mut fix = AuthorityFix::new();
        for b in &input {
            fix.feed(std::slice::from_ref(b));
        }
        fix.finish();
        let out = fix.output().to_vec();
        let fixed_block = grpc_block(b"tmp-2Fsock");
        let mut expected = preface.to_vec();
        expected.extend_from_slice(&settings);
        expected.extend_from_slice(&[
            0,
            0,
            fixed_block.len() as u8,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
        ]);
        expected.extend_from_slice(&fixed_block);
        expected.extend_from_slice(&data);
        assert_eq!(out, expected);
    }

    #[test]
    fn protocol_errors_pass_through_in_order() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let block = grpc_block(b"a%2Fb");
        // HEADERS without END_HEADERS, then another HEADERS: invalid, so both go to h2 as sent.
        let mut one = vec![0, 0, block.len() as u8, TYPE_HEADERS, 0, 0, 0, 0, 1];
        one.extend_from_slice(&block);
        let mut two = vec![
            0,
            0,
            block.len() as u8,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            3,
        ];
        two.extend_from_slice(&block);
        let mut input = preface.to_vec();
        input.extend_from_slice(&one);
        input.extend_from_slice(&two);
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let mut fix = AuthorityFix::new();
        fix.feed(&input);
        assert_eq!(fix.output(), input.as_slice());
    }

    #[test]
    fn continuation_frames_are_joined() {
        let block = grpc_block(b"a%2Fb");
        let (one, two) = block.split_at(3);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&[
            0,
            0,
            one.len() as u8,
            TYPE_HEADERS,
            FLAG_END_STREAM,
            0,
            0,
            0,
            3,
        ]);
        input.extend_from_slice(one);
        input.extend_from_slice(&[
            0,
            0,
            two.len() as u8,
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            3,
        ]);
        input.extend_from_slice(two);
        let mut fix = AuthorityFix::new();
        fix.feed(&input);
        let out = fix.output();
        let fixed = grpc_block(b"a-2Fb");
        assert_eq!(
            &out[24..33],
            &[
                0,
                0,
                fixed.len() as u8,
                TYPE_HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                0,
                0,
                0,
                3
            ]
        );
        assert_eq!(&out[33..], fixed.as_slice());
    }
}
