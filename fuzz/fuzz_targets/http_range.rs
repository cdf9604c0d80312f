//! `Range` and `Content-Range` parsing and formatting (`heartbeat_wire::range`).
//!
//! Input: a header value (any bytes; parsed when UTF-8, as `to_str` hands it
//! over) and, read from its first 24 bytes, two offsets and a device size.
//!
//! Invariants:
//! - no panic, in parsing or in any method of a parsed value;
//! - a parsed range is well-formed: `first <= last`, and its length is
//!   `last - first + 1` (saturated for the full 2^64-byte range, which then
//!   fits in no device);
//! - parse(format(x)) == x for every valid range and every form the
//!   protocol writes (`bytes=a-b`, `bytes=a-`, `bytes=-n`, `bytes a-b/size`,
//!   `bytes a-b/*`), and formatting a parsed value parses back to it;
//! - `resolve` never clips a bounded range and only returns ranges that lie
//!   inside the device.

#![no_main]

use heartbeat_fuzz::Input;
use heartbeat_wire::range::RangeRequest;
use heartbeat_wire::{ByteRange, ContentRange};
use libfuzzer_sys::fuzz_target;

fn check_range(r: ByteRange) {
    assert!(r.first <= r.last);
    // The length is last - first + 1, saturated for the one range whose
    // length does not fit in a u64 (documented on `ByteRange::len`); that
    // range must then fit in no device.
    let len = r.len();
    assert_eq!(len, (r.last - r.first).saturating_add(1), "length of {r:?}");
    if (r.last - r.first).checked_add(1).is_none() {
        assert!(!r.fits_in(u64::MAX), "a range of 2^64 bytes fits somewhere");
    }
    assert!(!r.is_empty());
    assert_eq!(r.offset(), r.first);
}

fn format_request(r: &RangeRequest) -> String {
    match r {
        RangeRequest::Bounded(b) => b.to_range_header(),
        RangeRequest::From(first) => format!("bytes={first}-"),
        RangeRequest::Suffix(n) => format!("bytes=-{n}"),
    }
}

fn check_resolve(r: &RangeRequest, size: u64) {
    let Some(got) = r.resolve(size) else {
        match r {
            RangeRequest::Bounded(b) => assert!(b.last >= size),
            RangeRequest::From(first) => assert!(*first >= size),
            RangeRequest::Suffix(n) => assert!(*n == 0 || size == 0),
        }
        return;
    };
    assert!(got.first <= got.last && got.fits_in(size), "{r:?} on {size} gave {got:?}");
    match r {
        RangeRequest::Bounded(b) => assert_eq!(got, *b, "a bounded range was clipped"),
        RangeRequest::From(first) => assert_eq!((got.first, got.last), (*first, size - 1)),
        RangeRequest::Suffix(n) => {
            assert_eq!(got.last, size - 1);
            assert_eq!(got.last - got.first, (*n).min(size) - 1);
        }
    }
}

fn round_trip_range(r: ByteRange, size: u64) {
    check_range(r);
    assert_eq!(RangeRequest::parse(&r.to_range_header()), Ok(RangeRequest::Bounded(r)));
    assert_eq!(
        ContentRange::parse(&ContentRange::format_unsized(r)),
        Ok(ContentRange { range: r, complete_length: None })
    );
    assert_eq!(
        ContentRange::parse(&r.to_content_range(size)),
        Ok(ContentRange { range: r, complete_length: Some(size) })
    );
    assert_eq!(r.to_string(), format!("{}-{}", r.first, r.last));
    let len = (r.last - r.first).checked_add(1);
    if let Some(from_len) = len.and_then(|n| ByteRange::from_offset_len(r.first, n)) {
        assert_eq!(from_len, r);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (a, b, size) = (input.u64(), input.u64(), input.u64());

    // Every valid range survives formatting and parsing.
    round_trip_range(ByteRange { first: a.min(b), last: a.max(b) }, size);
    for r in [RangeRequest::From(a), RangeRequest::Suffix(b)] {
        assert_eq!(RangeRequest::parse(&format_request(&r)), Ok(r));
        check_resolve(&r, size);
    }
    if let Some(r) = ByteRange::from_offset_len(a, b) {
        assert_eq!((r.first, r.len()), (a, b));
    }

    // Whatever parses is well-formed and formats back to itself.
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = RangeRequest::parse(value) {
        if let RangeRequest::Bounded(b) = r {
            check_range(b);
        }
        assert_eq!(RangeRequest::parse(&format_request(&r)), Ok(r));
        check_resolve(&r, size);
    }
    if let Ok(cr) = ContentRange::parse(value) {
        check_range(cr.range);
        let formatted = match cr.complete_length {
            Some(n) => cr.range.to_content_range(n),
            None => ContentRange::format_unsized(cr.range),
        };
        assert_eq!(ContentRange::parse(&formatted), Ok(cr));
    }
});
