//! UDP datagrams on a stream: each one a `u16` big-endian length, then its bytes. A stream
//! carries one flow; the framing keeps each datagram whole (never merged with the next, never
//! split), and an empty datagram is a frame of length 0.

use super::DecodeError;

/// Largest datagram a frame carries (the `u16` length; IPv4 UDP payloads stop at 65,507).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Bytes of the length before each datagram.
pub const PREFIX_LEN: usize = 2;

/// Appends `payload` as one frame to `out`; a payload longer than [`MAX_DATAGRAM`] is refused
/// (nothing is appended).
pub fn encode(payload: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len = u16::try_from(payload.len()).map_err(|_| DecodeError::TooLong {
        field: "datagram",
        len: payload.len(),
        max: MAX_DATAGRAM,
    })?;
    out.reserve(PREFIX_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The first whole frame at the start of `buf`: its datagram and the bytes it took, or `None`
/// when `buf` holds only part of one (read more and ask again).
pub fn decode(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (prefix, rest) = buf.split_first_chunk::<PREFIX_LEN>()?;
    let len = usize::from(u16::from_be_bytes(*prefix));
    let payload = rest.get(..len)?;
    Some((payload, PREFIX_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_boundaries_and_partial_input_waits_for_more() {
        let mut wire = Vec::new();
        for payload in [&b"first"[..], b"", &[0u8; 300][..]] {
            encode(payload, &mut wire).unwrap();
        }
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((payload, used)) = decode(&wire[at..]) {
            seen.push(payload.len());
            at += used;
        }
        assert_eq!((seen, at), (vec![5, 0, 300], wire.len()));
        for cut in 0..7 {
            assert_eq!(decode(&wire[..cut]).map(|(p, _)| p), (cut >= 7).then_some(&b"first"[..]), "{cut}");
        }
        assert_eq!(decode(&wire[..7]).unwrap().0, b"first");
    }

    #[test]
    fn a_datagram_too_large_for_the_length_is_refused_whole() {
        let mut out = vec![9];
        assert!(encode(&vec![0; MAX_DATAGRAM + 1], &mut out).is_err());
        assert_eq!(out, [9]);
        encode(&vec![1; MAX_DATAGRAM], &mut out).unwrap();
        assert_eq!(decode(&out[1..]).unwrap().1, MAX_DATAGRAM + PREFIX_LEN);
    }
}
