//! `Range` and `Content-Range` headers, in the single-range byte form the
//! protocol uses (RFC 9110 sections 14.1.2 and 14.4).

use std::fmt;

/// An inclusive byte range `first..=last`, as HTTP writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    /// The range covering `len` bytes from `offset`; `None` when `len` is zero
    /// or the end overflows (HTTP cannot express an empty range).
    pub fn from_offset_len(offset: u64, len: u64) -> Option<Self> {
        let last = offset.checked_add(len)?.checked_sub(1)?;
        (len > 0).then_some(Self {
            first: offset,
            last,
        })
    }

    pub fn offset(&self) -> u64 {
        self.first
    }

    /// Bytes in the range. Saturates for the one range whose length does not
    /// fit in a u64 (`0-18446744073709551615`); no device is that large, so
    /// such a range is refused by every size check downstream.
    pub fn len(&self) -> u64 {
        (self.last - self.first).saturating_add(1)
    }

    /// Never true: a parsed range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the whole range lies inside a device of `size` bytes.
    pub fn fits_in(&self, size: u64) -> bool {
        self.last < size
    }

    /// `Range` request header value: `bytes=a-b`.
    pub fn to_range_header(&self) -> String {
        format!("bytes={}-{}", self.first, self.last)
    }

    /// `Content-Range` header value: `bytes a-b/size`.
    pub fn to_content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.first, self.last, size)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Why a range header was refused. Each maps to one HTTP status: syntax
/// problems are 400, a well-formed range the device cannot satisfy is 416.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed {header} header {value:?}: expected {expected}")]
    Malformed {
        header: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("range {first}-{last} is reversed (first byte after last byte)")]
    Reversed { first: u64, last: u64 },
    #[error("multiple ranges are not supported; send one range per request")]
    MultipleRanges,
}

/// The parsed `Range` header of a GET. An open-ended `bytes=a-` is resolved
/// against the device size by [`RangeRequest::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=a-b`
    Bounded(ByteRange),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// Parse a `Range` header value. Only one range is accepted.
    pub fn parse(value: &str) -> Result<Self, RangeError> {
        const EXPECTED: &str = "bytes=FIRST-LAST";
        let malformed = || RangeError::Malformed {
            header: "Range",
            value: value.to_owned(),
            expected: EXPECTED,
        };
        let spec = value.trim().strip_prefix("bytes=").ok_or_else(malformed)?;
        if spec.contains(',') {
            return Err(RangeError::MultipleRanges);
        }
        let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
        let (first, last) = (first.trim(), last.trim());
        match (first.is_empty(), last.is_empty()) {
            (true, true) => Err(malformed()),
            (true, false) => Ok(Self::Suffix(parse_u64(last).ok_or_else(malformed)?)),
            (false, true) => Ok(Self::From(parse_u64(first).ok_or_else(malformed)?)),
            (false, false) => {
                let first = parse_u64(first).ok_or_else(malformed)?;
                let last = parse_u64(last).ok_or_else(malformed)?;
                if first > last {
                    return Err(RangeError::Reversed { first, last });
                }
                Ok(Self::Bounded(ByteRange { first, last }))
            }
        }
    }

    /// The concrete range on a device of `size` bytes, or `None` when it is
    /// unsatisfiable there (416). A bounded range is never clipped: a block
    /// device proxy must not silently return fewer bytes than asked for.
    pub fn resolve(&self, size: u64) -> Option<ByteRange> {
        match *self {
            Self::Bounded(range) => range.fits_in(size).then_some(range),
            // `then`, not `then_some`: `size - 1` must not be evaluated for an
            // empty device.
            Self::From(first) => (first < size).then(|| ByteRange {
                first,
                last: size - 1,
            }),
            Self::Suffix(n) => (n > 0 && size > 0).then(|| ByteRange {
                first: size.saturating_sub(n),
                last: size - 1,
            }),
        }
    }
}

/// The parsed `Content-Range` header of a PUT: `bytes a-b/size` or `bytes a-b/*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub range: ByteRange,
    /// The complete length the client believes the device has, if it said.
    pub complete_length: Option<u64>,
}

impl ContentRange {
    pub fn parse(value: &str) -> Result<Self, RangeError> {
        const EXPECTED: &str = "bytes FIRST-LAST/SIZE or bytes FIRST-LAST/*";
        let malformed = || RangeError::Malformed {
            header: "Content-Range",
            value: value.to_owned(),
            expected: EXPECTED,
        };
        let spec = value.trim().strip_prefix("bytes ").ok_or_else(malformed)?;
        let (range, complete) = spec.split_once('/').ok_or_else(malformed)?;
        let (first, last) = range.split_once('-').ok_or_else(malformed)?;
        let first = parse_u64(first.trim()).ok_or_else(malformed)?;
        let last = parse_u64(last.trim()).ok_or_else(malformed)?;
        if first > last {
            return Err(RangeError::Reversed { first, last });
        }
        let complete_length = match complete.trim() {
            "*" => None,
            n => Some(parse_u64(n).ok_or_else(malformed)?),
        };
        Ok(Self {
            range: ByteRange { first, last },
            complete_length,
        })
    }

    /// The header value for a write of `range` without claiming a device size.
    pub fn format_unsized(range: ByteRange) -> String {
        format!("bytes {}-{}/*", range.first, range.last)
    }
}

/// Strict decimal: digits only, no sign, no whitespace inside, no overflow.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bounded_range() {
        assert_eq!(
            RangeRequest::parse("bytes=0-511").unwrap(),
            RangeRequest::Bounded(ByteRange {
                first: 0,
                last: 511
            })
        );
    }

    #[test]
    fn parses_open_and_suffix_ranges() {
        assert_eq!(
            RangeRequest::parse("bytes=10-").unwrap(),
            RangeRequest::From(10)
        );
        assert_eq!(
            RangeRequest::parse("bytes=-10").unwrap(),
            RangeRequest::Suffix(10)
        );
        let size = 100;
        assert_eq!(
            RangeRequest::From(10).resolve(size),
            Some(ByteRange {
                first: 10,
                last: 99
            })
        );
        assert_eq!(
            RangeRequest::Suffix(10).resolve(size),
            Some(ByteRange {
                first: 90,
                last: 99
            })
        );
        assert_eq!(RangeRequest::From(100).resolve(size), None);
        assert_eq!(RangeRequest::Suffix(0).resolve(size), None);
    }

    #[test]
    fn bounded_range_past_end_is_unsatisfiable_not_clipped() {
        let r = RangeRequest::parse("bytes=90-109").unwrap();
        assert_eq!(r.resolve(100), None);
        assert_eq!(
            r.resolve(110),
            Some(ByteRange {
                first: 90,
                last: 109
            })
        );
    }

    #[test]
    fn rejects_malformed_ranges() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "items=0-1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=99999999999999999999-1",
            "bytes= 1 2-3",
        ] {
            assert!(
                matches!(RangeRequest::parse(bad), Err(RangeError::Malformed { .. })),
                "{bad:?} should be malformed"
            );
        }
        assert_eq!(
            RangeRequest::parse("bytes=5-4"),
            Err(RangeError::Reversed { first: 5, last: 4 })
        );
        assert_eq!(
            RangeRequest::parse("bytes=0-1,4-5"),
            Err(RangeError::MultipleRanges)
        );
    }

    #[test]
    fn parses_content_range() {
        let cr = ContentRange::parse("bytes 4096-5119/4194304").unwrap();
        assert_eq!(
            cr.range,
            ByteRange {
                first: 4096,
                last: 5119
            }
        );
        assert_eq!(cr.complete_length, Some(4194304));
        let cr = ContentRange::parse("bytes 0-0/*").unwrap();
        assert_eq!(cr.range.len(), 1);
        assert_eq!(cr.complete_length, None);
    }

    #[test]
    fn rejects_malformed_content_range() {
        for bad in [
            "bytes 0-1",
            "bytes=0-1/2",
            "bytes 0-x/2",
            "bytes 0-1/x",
            "0-1/2",
            "bytes -1/2",
        ] {
            assert!(
                ContentRange::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(matches!(
            ContentRange::parse("bytes 9-1/*"),
            Err(RangeError::Reversed { .. })
        ));
    }

    #[test]
    fn empty_device_and_full_width_ranges_do_not_overflow() {
        // Found by the http_range fuzz target.
        assert_eq!(RangeRequest::From(0).resolve(0), None);
        assert_eq!(RangeRequest::Suffix(5).resolve(0), None);
        let full = ContentRange::parse("bytes 0-18446744073709551615/*").unwrap();
        assert_eq!(full.range.len(), u64::MAX);
        assert!(!full.range.fits_in(u64::MAX));
    }

    #[test]
    fn formats_round_trip() {
        let r = ByteRange::from_offset_len(4096, 1024).unwrap();
        assert_eq!(r.to_range_header(), "bytes=4096-5119");
        assert_eq!(
            RangeRequest::parse(&r.to_range_header()).unwrap(),
            RangeRequest::Bounded(r)
        );
        assert_eq!(
            ContentRange::parse(&ContentRange::format_unsized(r))
                .unwrap()
                .range,
            r
        );
        assert_eq!(r.to_content_range(8192), "bytes 4096-5119/8192");
        assert_eq!(ByteRange::from_offset_len(0, 0), None);
        assert_eq!(ByteRange::from_offset_len(u64::MAX, 2), None);
    }
}
