//! Primitive field codec shared by every message: big-endian integers, length-prefixed strings,
//! socket addresses. A [`Reader`] never panics and never allocates more than the input holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::DecodeError;

/// Cursor over an untrusted byte slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A UTF-8 string behind a `u16` length, at most `max` bytes.
    pub(crate) fn string(&mut self, max: usize, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        let raw = self.bytes(len, field)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// An optional IP address: family 0 (none), 4 or 6, then the octets.
    pub(crate) fn opt_ip(&mut self, field: &'static str) -> Result<Option<IpAddr>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            4 => Ok(Some(IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)))),
            6 => Ok(Some(IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)))),
            other => Err(DecodeError::InvalidValue { field, value: u64::from(other) }),
        }
    }

    pub(crate) fn socket_addr(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = self.opt_ip(field)?.ok_or(DecodeError::InvalidValue { field, value: 0 })?;
        Ok(SocketAddr::new(ip, self.u16(field)?))
    }

    /// An optional socket address: family 0 alone for none, else as [`Reader::socket_addr`].
    pub(crate) fn opt_socket_addr(&mut self, field: &'static str) -> Result<Option<SocketAddr>, DecodeError> {
        match self.opt_ip(field)? {
            None => Ok(None),
            Some(ip) => Ok(Some(SocketAddr::new(ip, self.u16(field)?))),
        }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// Appends fields to a message body.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Writes a `u16`-prefixed string, cut at `max` bytes (on a char boundary) so an
    /// over-long human-readable reason can never make an encoder fail.
    pub(crate) fn string(&mut self, v: &str, max: usize) -> &mut Self {
        let mut end = v.len().min(max).min(usize::from(u16::MAX));
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        let len = u16::try_from(end).unwrap_or(u16::MAX);
        self.u16(len).bytes(&v.as_bytes()[..end])
    }

    pub(crate) fn opt_ip(&mut self, ip: Option<IpAddr>) -> &mut Self {
        match ip {
            None => self.u8(0),
            Some(IpAddr::V4(v4)) => self.u8(4).bytes(&v4.octets()),
            Some(IpAddr::V6(v6)) => self.u8(6).bytes(&v6.octets()),
        }
    }

    pub(crate) fn socket_addr(&mut self, addr: SocketAddr) -> &mut Self {
        self.opt_ip(Some(addr.ip())).u16(addr.port())
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_input_names_the_field() {
        let err = Reader::new(&[0, 1]).u32("port").unwrap_err();
        assert_eq!(err, DecodeError::Truncated { field: "port" });
    }

    #[test]
    fn string_length_is_capped_before_reading() {
        let mut w = Writer::new();
        w.u16(500);
        let err = Reader::new(&w.finish()).string(64, "name").unwrap_err();
        assert_eq!(err, DecodeError::TooLong { field: "name", len: 500, max: 64 });
    }

    #[test]
    fn long_string_is_cut_on_a_char_boundary() {
        let mut w = Writer::new();
        w.string("ééé", 3);
        let bytes = w.finish();
        assert_eq!(Reader::new(&bytes).string(16, "s").unwrap(), "é");
    }

    #[test]
    fn socket_addrs_round_trip() {
        for addr in ["127.0.0.1:80", "[::1]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut w = Writer::new();
            w.socket_addr(addr);
            assert_eq!(Reader::new(&w.finish()).socket_addr("a").unwrap(), addr);
        }
    }
}
