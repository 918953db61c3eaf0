//! The verification outcomes and the text Envoy answers with for each (jwt_verify_lib's
//! `getStatusString`), plus the response code details (`jwt_authn_access_denied{<text with
//! spaces as underscores>}`), all static so a rejection does not format anything.

/// Why a token (or a requirement) failed; `Ok` when it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
}

macro_rules! texts {
    ($($v:ident => $t:literal, $d:literal;)*) => {
        impl Status {
            /// Envoy's text for the status (the 401/403 body).
            pub fn text(self) -> &'static str {
                match self { $(Status::$v => $t,)* }
            }
            /// Envoy's response code details for a rejection with this status.
            pub fn details(self) -> &'static str {
                match self { $(Status::$v => $d,)* }
            }
        }
    };
}

texts! {
    Ok => "OK", "jwt_authn_access_denied{OK}";
    JwtMissed => "Jwt is missing", "jwt_authn_access_denied{Jwt_is_missing}";
    JwtNotYetValid => "Jwt not yet valid", "jwt_authn_access_denied{Jwt_not_yet_valid}";
    JwtExpired => "Jwt is expired", "jwt_authn_access_denied{Jwt_is_expired}";
    JwtBadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        "jwt_authn_access_denied{Jwt_is_not_in_the_form_of_Header.Payload.Signature_with_two_dots_and_3_sections}";
    JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
        "jwt_authn_access_denied{Jwt_header_is_an_invalid_Base64url_encoded}";
    JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON", "jwt_authn_access_denied{Jwt_header_is_an_invalid_JSON}";
    JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
        "jwt_authn_access_denied{Jwt_header_[alg]_field_is_required_and_must_be_a_string}";
    JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
        "jwt_authn_access_denied{Jwt_header_[alg]_is_not_supported}";
    JwtHeaderBadKid => "Jwt header [kid] field is not a string",
        "jwt_authn_access_denied{Jwt_header_[kid]_field_is_not_a_string}";
    JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
        "jwt_authn_access_denied{Jwt_payload_is_an_invalid_Base64url_encoded}";
    JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
        "jwt_authn_access_denied{Jwt_ED25519_signature_is_wrong_length}";
    JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON", "jwt_authn_access_denied{Jwt_payload_is_an_invalid_JSON}";
    JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
        "jwt_authn_access_denied{Jwt_payload_[iss]_field_is_not_a_string}";
    JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
        "jwt_authn_access_denied{Jwt_payload_[sub]_field_is_not_a_string}";
    JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
        "jwt_authn_access_denied{Jwt_payload_[iat]_field_is_not_an_integer}";
    JwtPayloadParseErrorIatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
        "jwt_authn_access_denied{Jwt_payload_[iat]_field_is_not_a_positive_64_bit_integer}";
    JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
        "jwt_authn_access_denied{Jwt_payload_[nbf]_field_is_not_an_integer}";
    JwtPayloadParseErrorNbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
        "jwt_authn_access_denied{Jwt_payload_[nbf]_field_is_not_a_positive_64_bit_integer}";
    JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
        "jwt_authn_access_denied{Jwt_payload_[exp]_field_is_not_an_integer}";
    JwtPayloadParseErrorExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
        "jwt_authn_access_denied{Jwt_payload_[exp]_field_is_not_a_positive_64_bit_integer}";
    JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
        "jwt_authn_access_denied{Jwt_payload_[jti]_field_is_not_a_string}";
    JwtPayloadParseErrorAudNotString => "Jwt payload [aud] field is not a string or string list",
        "jwt_authn_access_denied{Jwt_payload_[aud]_field_is_not_a_string_or_string_list}";
    JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
        "jwt_authn_access_denied{Jwt_signature_is_an_invalid_Base64url_encoded}";
    JwtUnknownIssuer => "Jwt issuer is not configured", "jwt_authn_access_denied{Jwt_issuer_is_not_configured}";
    JwtAudienceNotAllowed => "Audiences in Jwt are not allowed", "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}";
    JwtVerificationFail => "Jwt verification fails", "jwt_authn_access_denied{Jwt_verification_fails}";
    JwksNoValidKeys => "Jwks doesn't have any valid public key",
        "jwt_authn_access_denied{Jwks_doesn't_have_any_valid_public_key}";
    JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
        "jwt_authn_access_denied{Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt}";
}

impl Status {
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }

    /// The HTTP status Envoy answers a failure with: 403 for a disallowed audience, else 401.
    pub fn http_status(self) -> http::StatusCode {
        if self == Status::JwtAudienceNotAllowed { http::StatusCode::FORBIDDEN } else { http::StatusCode::UNAUTHORIZED }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_the_text_with_underscores() {
        for s in [Status::JwtMissed, Status::JwtBadFormat, Status::JwksKidAlgMismatch, Status::JwtAudienceNotAllowed] {
            assert_eq!(s.details(), format!("jwt_authn_access_denied{{{}}}", s.text().replace(' ', "_")));
        }
    }
}
