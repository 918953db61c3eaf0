//! The protobuf wire format, read without decoding: what the field guard and the validation
//! rules walk.

/// One field's payload on the wire.
pub enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64(u64),
}

/// A protobuf wire-format reader (proto3: no groups).
pub struct Reader<'a> {
    pub buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// The next field, or None at the end (or on malformed input: what prost decoded already
    /// passed, so a short read here only ends the walk).
    pub fn next_field(&mut self) -> Option<(u32, Value<'a>)> {
        if self.buf.is_empty() {
            return None;
        }
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).ok()?;
        let v = match tag & 7 {
            0 => Value::Int(self.varint()?),
            1 => {
                let (b, rest) = self.buf.split_first_chunk::<8>()?;
                self.buf = rest;
                Value::Fixed64(u64::from_le_bytes(*b))
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let b = self.buf.get(..len)?;
                self.buf = &self.buf[len..];
                Value::Bytes(b)
            }
            5 => {
                let (b, rest) = self.buf.split_first_chunk::<4>()?;
                self.buf = rest;
                Value::Fixed32(u32::from_le_bytes(*b))
            }
            _ => return None,
        };
        Some((number, v))
    }
}
