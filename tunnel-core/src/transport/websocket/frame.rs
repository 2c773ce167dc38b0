//! WebSocket frame headers (RFC 6455 section 5.2), sans-IO: decoded from and encoded into
//! byte slices, and the payload mask.

/// Largest payload a control frame (close, ping, pong) may carry.
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Result<Self, FrameError> {
        Ok(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(FrameError::UnknownOpcode(other)),
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub(super) fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// The last frame of its message.
    pub(super) fin: bool,
    pub(super) opcode: Opcode,
    /// The masking key (frames a client sends are masked, a server's are not).
    pub(super) mask: Option<[u8; 4]>,
    /// Payload length.
    pub(super) len: u64,
}

/// A frame header that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameError {
    #[error("reserved bits set in a frame header (no extension was agreed)")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("a fragmented control frame")]
    FragmentedControl,
    #[error("a control frame of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    #[error("a payload length with its top bit set")]
    LengthTooLarge,
    #[error("a frame from the client without a mask")]
    Unmasked,
    #[error("a masked frame from the server")]
    Masked,
}

impl Header {
    /// Decodes a header from the start of `buf`: `Ok(None)` while it is incomplete, else the
    /// header and its length in bytes. `masked` is whether the peer must mask (it is a client).
    pub(super) fn decode(buf: &[u8], masked: bool) -> Result<Option<(Self, usize)>, FrameError> {
        let [first, second, ..] = *buf else { return Ok(None) };
        if first & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let (fin, opcode) = (first & 0x80 != 0, Opcode::from_bits(first & 0x0F)?);
        let has_mask = second & 0x80 != 0;
        match (has_mask, masked) {
            (false, true) => return Err(FrameError::Unmasked),
            (true, false) => return Err(FrameError::Masked),
            _ => {}
        }
        let (len, mut at) = match second & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().unwrap_or_default());
                    if len >> 63 != 0 {
                        return Err(FrameError::LengthTooLarge);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::ControlTooLong(len));
            }
        }
        let mask = match has_mask {
            true => match buf.get(at..at + 4) {
                Some(key) => {
                    at += 4;
                    Some([key[0], key[1], key[2], key[3]])
                }
                None => return Ok(None),
            },
            false => None,
        };
        Ok(Some((Self { fin, opcode, mask, len }, at)))
    }

    /// Appends the header to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | self.opcode.bits());
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.len {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
    }
}

/// XORs `data` with `key`, `data` starting at byte `offset` of its frame's payload.
pub(super) fn apply_mask(key: [u8; 4], offset: u64, data: &mut [u8]) {
    let mut key = key;
    key.rotate_left((offset % 4) as usize);
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let masked = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(header: Header) -> Vec<u8> {
        let mut out = Vec::new();
        header.encode(&mut out);
        out
    }

    #[test]
    fn headers_round_trip_at_each_length_form() {
        for len in [0, 125, 126, 0xFFFF, 0x1_0000, u64::MAX >> 1] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let header = Header { fin: true, opcode: Opcode::Binary, mask, len };
                let bytes = encoded(header);
                assert_eq!(Header::decode(&bytes, mask.is_some()), Ok(Some((header, bytes.len()))));
                for cut in 0..bytes.len() {
                    assert_eq!(Header::decode(&bytes[..cut], mask.is_some()), Ok(None), "{len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn the_rfc_examples_decode() {
        // RFC 6455 section 5.7: a single-frame unmasked "Hello", and the masked one.
        let (header, at) = Header::decode(&[0x81, 0x05, 0x48], false).unwrap().unwrap();
        assert_eq!((header.opcode, header.len, at), (Opcode::Text, 5, 2));
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (header, at) = Header::decode(&masked, true).unwrap().unwrap();
        let mut payload = masked[at..].to_vec();
        apply_mask(header.mask.unwrap(), 0, &mut payload);
        assert_eq!(payload, b"Hello");
    }

    #[test]
    fn masking_from_any_offset_matches_masking_in_one_go() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(key, 0, &mut whole);
        for split in [1, 2, 3, 4, 5, 7, 999] {
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(key, 0, a);
            apply_mask(key, split as u64, b);
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn protocol_breaks_are_named() {
        assert_eq!(Header::decode(&[0xC2, 0x80, 0, 0, 0, 0], true), Err(FrameError::ReservedBits));
        assert_eq!(Header::decode(&[0x83, 0x80], true), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(Header::decode(&[0x09, 0x80], true), Err(FrameError::FragmentedControl));
        assert_eq!(Header::decode(&[0x89, 0xFE, 0, 126], true), Err(FrameError::ControlTooLong(126)));
        let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Header::decode(&huge, true), Err(FrameError::LengthTooLarge));
        assert_eq!(Header::decode(&[0x82, 0x00], true), Err(FrameError::Unmasked));
        assert_eq!(Header::decode(&[0x82, 0x80], false), Err(FrameError::Masked));
    }
}
