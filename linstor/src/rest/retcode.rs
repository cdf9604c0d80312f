//! Decoding of LINSTOR's masked return codes (`ApiCallRc.ret_code`).
//!
//! Layout (linstor-common `consts.json`): bits 62-63 message type, bits 24-25
//! operation, bits 18-22 object, bits 0-14 the code itself. ERROR is both top
//! bits (0xC000…), WARN the top one only and INFO the second one only, so the
//! ERROR mask has to be tested first or an error would read as a warning.
//! In JSON the value is a signed i64, hence negative for errors and warnings.

use std::fmt;

use super::types::ApiCallRc;

pub const MASK_ERROR: u64 = 0xC000_0000_0000_0000;
pub const MASK_WARN: u64 = 0x8000_0000_0000_0000;
pub const MASK_INFO: u64 = 0x4000_0000_0000_0000;
pub const MASK_BITS_CODE: u64 = 0x7FFF;

pub const MASK_CRT: u64 = 0x0100_0000;
pub const MASK_MOD: u64 = 0x0200_0000;
pub const MASK_DEL: u64 = 0x0300_0000;
pub const MASK_BITS_OP: u64 = 0x0300_0000;

pub const MASK_BITS_OBJ: u64 = 0x007C_0000;
pub const MASK_VLM_GRP: u64 = 0x0048_0000;
pub const MASK_RSC_GRP: u64 = 0x0044_0000;
pub const MASK_NODE: u64 = 0x003C_0000;
pub const MASK_RSC_DFN: u64 = 0x0038_0000;
pub const MASK_RSC: u64 = 0x0034_0000;
pub const MASK_VLM_DFN: u64 = 0x0030_0000;
pub const MASK_STOR_POOL_DFN: u64 = 0x0018_0000;
pub const MASK_STOR_POOL: u64 = 0x0014_0000;

/// Codes (low 15 bits) this crate reacts to.
pub const CREATED: u64 = 1;
pub const FAIL_NOT_FOUND_STOR_POOL_DFN: u64 = 309;
pub const FAIL_NOT_FOUND_STOR_POOL: u64 = 310;
pub const FAIL_NOT_FOUND_RSC_GRP: u64 = 317;
pub const FAIL_EXISTS_RSC_DFN: u64 = 501;
pub const FAIL_EXISTS_VLM_DFN: u64 = 503;
pub const FAIL_EXISTS_RSC_GRP: u64 = 522;
pub const FAIL_EXISTS_VLM_GRP: u64 = 523;

/// Message type of a return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Success,
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Success => "success",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A decoded `ret_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetCode(pub i64);

impl RetCode {
    fn bits(self) -> u64 {
        self.0 as u64
    }

    pub fn severity(self) -> Severity {
        let b = self.bits();
        if b & MASK_ERROR == MASK_ERROR {
            Severity::Error
        } else if b & MASK_WARN == MASK_WARN {
            Severity::Warning
        } else if b & MASK_INFO == MASK_INFO {
            Severity::Info
        } else {
            Severity::Success
        }
    }

    /// The code proper (bits 0-14), e.g. [`FAIL_EXISTS_RSC_GRP`].
    pub fn code(self) -> u64 {
        self.bits() & MASK_BITS_CODE
    }

    pub fn is_error(self) -> bool {
        self.severity() == Severity::Error
    }

    /// An error whose code is `code`, whatever object and operation bits it carries.
    pub fn is_error_code(self, code: u64) -> bool {
        self.is_error() && self.code() == code
    }

    /// The object the code is about, when LINSTOR set the object bits.
    pub fn object(self) -> Option<&'static str> {
        Some(match self.bits() & MASK_BITS_OBJ {
            MASK_VLM_GRP => "volume group",
            MASK_RSC_GRP => "resource group",
            MASK_NODE => "node",
            MASK_RSC_DFN => "resource definition",
            MASK_RSC => "resource",
            MASK_VLM_DFN => "volume definition",
            MASK_STOR_POOL_DFN => "storage pool definition",
            MASK_STOR_POOL => "storage pool",
            _ => return None,
        })
    }

    /// Build a code the way LINSTOR does: `code | object | operation | type`.
    pub const fn compose(severity_mask: u64, object: u64, op: u64, code: u64) -> i64 {
        (severity_mask | object | op | code) as i64
    }
}

impl ApiCallRc {
    pub fn rc(&self) -> RetCode {
        RetCode(self.ret_code)
    }
}

/// One reply entry as a person reads it: severity, message, cause, correction.
pub struct Explained<'a>(pub &'a ApiCallRc);

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rc = self.0.rc();
        write!(f, "LINSTOR {} (code {}", rc.severity(), rc.code())?;
        if let Some(obj) = rc.object() {
            write!(f, ", {obj}")?;
        }
        write!(f, "): {}", self.0.message)?;
        if let Some(cause) = self.0.cause.as_deref().filter(|s| !s.is_empty()) {
            write!(f, "\n  cause: {cause}")?;
        }
        if let Some(details) = self.0.details.as_deref().filter(|s| !s.is_empty()) {
            write!(f, "\n  details: {details}")?;
        }
        if let Some(correction) = self.0.correction.as_deref().filter(|s| !s.is_empty()) {
            write!(f, "\n  correction: {correction}")?;
        }
        if !self.0.error_report_ids.is_empty() {
            write!(
                f,
                "\n  error reports: {} (see `linstor error-reports show <id>`)",
                self.0.error_report_ids.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mask_is_tested_before_warn() {
        let rc = RetCode::compose(MASK_ERROR, MASK_RSC_GRP, MASK_CRT, FAIL_EXISTS_RSC_GRP);
        assert!(rc < 0, "errors are negative as signed i64");
        let rc = RetCode(rc);
        assert_eq!(rc.severity(), Severity::Error);
        assert!(rc.is_error_code(FAIL_EXISTS_RSC_GRP));
        assert_eq!(rc.object(), Some("resource group"));
    }

    #[test]
    fn warn_info_success() {
        assert_eq!(RetCode(MASK_WARN as i64 | 5).severity(), Severity::Warning);
        assert_eq!(RetCode(MASK_INFO as i64 | 5).severity(), Severity::Info);
        let created = RetCode::compose(0, MASK_RSC_GRP, MASK_CRT, CREATED);
        assert_eq!(RetCode(created).severity(), Severity::Success);
        assert_eq!(RetCode(created).code(), CREATED);
    }

    #[test]
    fn literal_negative_code_from_json() {
        // FAIL_EXISTS_RSC_DFN | MASK_RSC_DFN | MASK_CRT | MASK_ERROR as LINSTOR prints it.
        let rc: ApiCallRc =
            serde_json::from_str(r#"{"ret_code": -4611686018406940171, "message": "x"}"#).unwrap();
        assert_eq!(rc.rc().severity(), Severity::Error);
        assert_eq!(rc.rc().code(), FAIL_EXISTS_RSC_DFN);
        assert_eq!(rc.rc().object(), Some("resource definition"));
    }
}
