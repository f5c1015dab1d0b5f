//! Store errors in words a person can act on: every error a backend raises is turned here
//! into one short sentence with the cause and the fix (`the bucket does not exist
//! (NoSuchBucket): create it, or check --s3-bucket and --s3-region`), and only that sentence
//! reaches stderr. The raw error (OpenDAL's context, the S3 error document, the request ID) is
//! logged at debug level by the backend, so `--debug` (and the log file) still has it.
//!
//! The wording depends on the cause, which is read from what the error carries: the S3 error
//! code of the answer, its HTTP status, or the network failure under it (refused, name not
//! found, TLS, timeout). What a fix names (the options, the credential variables, the
//! permissions) depends on the backend: a [`Service`] says it, one constant per backend
//! ([`S3`]); a backend on OpenDAL needs only its own constant and, where its error codes
//! differ from S3's, a few more arms in [`opendal()`].

use std::fmt::Write as _;

/// What an explanation names for one backend.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Whose credentials: `AWS`.
    pub vendor: &'static str,
    /// The container's noun: `bucket`.
    pub container: &'static str,
    /// The option naming the container.
    pub container_flag: &'static str,
    /// The option naming the region, if the backend has regions.
    pub region_flag: Option<&'static str>,
    /// The option naming a custom endpoint.
    pub endpoint_flag: &'static str,
    /// What else makes the host name, for a name that does not resolve.
    pub host_from: &'static str,
    /// Where the key ID and the secret come from, for "check ...".
    pub secret_from: &'static str,
    /// How to give credentials when none were found.
    pub credentials_from: &'static str,
    /// The permissions the cache needs.
    pub permissions: &'static str,
}

/// AWS S3 and S3-compatible stores.
pub const S3: Service = Service {
    vendor: "AWS",
    container: "bucket",
    container_flag: "--s3-bucket",
    region_flag: Some("--s3-region"),
    endpoint_flag: "--s3-endpoint",
    host_from: " (without it, --s3-bucket and --s3-region make the AWS host name)",
    secret_from: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or GOREMOTECACHE_AWS_*, which \
                  come first, or the profile in use)",
    credentials_from: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or GOREMOTECACHE_AWS_*), \
                       a profile (AWS_PROFILE), web identity, or --s3-instance-metadata on EC2",
    permissions: "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket",
};

/// Google Cloud Storage.
pub const GCS: Service = Service {
    vendor: "Google",
    container: "bucket",
    container_flag: "--gcs-bucket",
    region_flag: None,
    endpoint_flag: "--gcs-endpoint",
    host_from: " (without it, Google's storage host name)",
    secret_from: "the service account key of GOOGLE_APPLICATION_CREDENTIALS (or the \
                  application-default credentials in use)",
    credentials_from: "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, run \
                       `gcloud auth application-default login`, or use --gcs-anonymous against an \
                       emulator",
    permissions: "storage.objects.get, storage.objects.create, storage.objects.delete and \
                  storage.objects.list on the bucket (roles/storage.objectAdmin)",
};

/// Azure Blob Storage.
pub const AZBLOB: Service = Service {
    vendor: "Azure",
    container: "container",
    container_flag: "--azblob-container",
    region_flag: None,
    endpoint_flag: "--azblob-endpoint",
    host_from: " (without it, --azblob-account makes the host name ACCOUNT.blob.core.windows.net)",
    secret_from: "AZURE_STORAGE_KEY and --azblob-account (or AZURE_STORAGE_CONNECTION_STRING, \
                  AZURE_STORAGE_SAS_TOKEN)",
    credentials_from: "set AZURE_STORAGE_KEY (with --azblob-account), AZURE_STORAGE_SAS_TOKEN or \
                       AZURE_STORAGE_CONNECTION_STRING",
    permissions: "read, write, delete and list on the container (the Storage Blob Data \
                  Contributor role)",
};

/// How an error should be acted on, as far as the wording can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Credentials missing, wrong or lacking a permission.
    Denied,
    /// The settings point at the wrong place (no such bucket, wrong region).
    Config,
    /// The network or the store failed for now.
    Transient,
    /// Anything else.
    Other,
}

/// The sentence for an OpenDAL error, and its cause when the sentence knows better than
/// OpenDAL's error kind (a wrong region is an `Unexpected` 301 to OpenDAL).
pub fn opendal(err: &opendal::Error, service: &Service) -> (String, Option<Cause>) {
    use opendal::ErrorKind;
    let full = err.to_string();
    let code = field(err.message(), "code");
    let status = status_of(&full);
    let label = match (&code, status) {
        (Some(code), _) => code.clone(),
        (None, Some(status)) => status.to_string(),
        (None, None) => err.kind().to_string(),
    };
    let container = service.container;
    let region_hint = match service.region_flag {
        Some(flag) => format!(" and {flag}"),
        None => String::new(),
    };
    if full.contains("reqsign::Sign") {
        return (
            format!(
                "no usable {} credentials were found (signing failed): {}",
                service.vendor, service.credentials_from
            ),
            Some(Cause::Denied),
        );
    }
    match code.as_deref() {
        Some("NoSuchBucket" | "ContainerNotFound") => {
            return (
                format!(
                    "the {container} does not exist ({label}): create it, or check {}{region_hint}",
                    service.container_flag
                ),
                Some(Cause::Config),
            );
        }
        Some("SignatureDoesNotMatch" | "AuthenticationFailed") => {
            return (
                format!(
                    "the secret access key is wrong ({label}): check {}",
                    service.secret_from
                ),
                Some(Cause::Denied),
            );
        }
        // Azure's answer to a key or SAS token that does not permit the request, and
        // Azurite's to a wrong key.
        Some("AuthorizationFailure" | "AuthorizationPermissionMismatch") => {
            return (
                format!(
                    "the credentials were refused ({label}): check {}, and that they grant {}",
                    service.secret_from, service.permissions
                ),
                Some(Cause::Denied),
            );
        }
        Some("InvalidAccessKeyId" | "NotSignedUp") => {
            return (
                format!(
                    "the access key ID is not known to the store ({label}): check {}, and {}",
                    service.secret_from, service.endpoint_flag
                ),
                Some(Cause::Denied),
            );
        }
        Some("ExpiredToken" | "TokenRefreshRequired" | "InvalidToken") => {
            return (
                format!(
                    "the session token has expired or is invalid ({label}): refresh the credentials (AWS_SESSION_TOKEN or the profile)"
                ),
                Some(Cause::Denied),
            );
        }
        Some(
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
        ) => {
            let message = field(err.message(), "message").unwrap_or_default();
            let fix = match (expected_region(&message), service.region_flag) {
                (Some(region), Some(flag)) => format!("set {flag} {region}"),
                (None, Some(flag)) => format!("set {flag} to the {container}'s region"),
                _ => format!("check {}", service.endpoint_flag),
            };
            return (
                format!("the {container} is in another region ({label}): {fix}"),
                Some(Cause::Config),
            );
        }
        Some("SlowDown" | "TooManyRequests" | "ServerBusy") => {
            return (
                format!(
                    "the store asks to slow down ({label}): lower --upload-concurrency and --prefetch-concurrency, or spread the keys over more prefixes"
                ),
                Some(Cause::Transient),
            );
        }
        _ => {}
    }
    if status == Some(301) {
        let fix = match service.region_flag {
            Some(flag) => format!("set {flag} to the {container}'s region"),
            None => format!("check {}", service.endpoint_flag),
        };
        return (
            format!("the {container} is in another region ({label}): {fix}"),
            Some(Cause::Config),
        );
    }
    if err.kind() == ErrorKind::PermissionDenied {
        // Without ListBucket, S3 answers a read of a missing key with 403, not 404.
        let trap = match service.permissions.contains("s3:ListBucket") {
            true => " (without s3:ListBucket every miss is answered 403)",
            false => "",
        };
        return (
            format!(
                "the credentials lack a permission ({label}): grant {}{trap}",
                service.permissions
            ),
            Some(Cause::Denied),
        );
    }
    if let Some(status) = status.filter(|s| *s >= 500) {
        let what = match &code {
            Some(code) => format!("{code}, HTTP {status}"),
            None => format!("HTTP {status}"),
        };
        return (
            format!(
                "the store failed on its side ({what}): nothing to fix here if it passes; if it lasts, check the store's health"
            ),
            Some(Cause::Transient),
        );
    }
    if err.kind() == ErrorKind::RateLimited {
        return (
            format!(
                "the store asks to slow down ({label}): lower --upload-concurrency and --prefetch-concurrency"
            ),
            Some(Cause::Transient),
        );
    }
    let url = context_url(&full);
    let chain = Chain::of(err.message(), std::error::Error::source(err));
    if let Some(sentence) = network(
        &chain,
        url.as_deref(),
        service.endpoint_flag,
        service.host_from,
    ) {
        return (sentence, Some(Cause::Transient));
    }
    if full.contains("timeout") || full.contains("timed out") {
        return (
            format!(
                "the store did not answer in time (timeout{}): check the network and the store, or raise --remote-timeout",
                url.as_deref()
                    .map(|u| format!(" at {}", origin(Some(u))))
                    .unwrap_or_default()
            ),
            Some(Cause::Transient),
        );
    }
    if err.kind() == ErrorKind::ConfigInvalid {
        return (
            format!(
                "the {} settings are not usable ({}): check {}{region_hint} and {}",
                container,
                short(err.message()),
                service.container_flag,
                service.endpoint_flag
            ),
            Some(Cause::Config),
        );
    }
    (
        format!(
            "the store answered with an error ({label}: {}): run with --debug for the details",
            short(&field(err.message(), "message").unwrap_or_else(|| err.message().to_string()))
        ),
        None,
    )
}

/// The sentence for an HTTP server's (`goremotecache serve`) refusal with `status`; `body` is
/// the server's own reason, short and without secrets.
pub fn http_status(status: u16, body: &str) -> String {
    let reason = match body.trim() {
        "" => String::new(),
        body => format!(": {}", short(body)),
    };
    match status {
        401 => format!(
            "the server refused the token (401{reason}): set --http-token (GOREMOTECACHE_HTTP_TOKEN) to a token the server knows"
        ),
        403 if body.contains("only read") => format!(
            "the token may only read (403{reason}): use a read-write token, or --remote-mode read-only for builds that should not upload"
        ),
        403 if body.contains("namespace") => format!(
            "the token may not use this namespace (403{reason}): check --namespace and --read-namespaces against the token's namespaces in the server's token file"
        ),
        403 => format!(
            "the token is not allowed this (403{reason}): check --http-token and the token's scope in the server's token file"
        ),
        404 => format!(
            "no goremotecache server API at this URL (404{reason}): check --http-url (the server's base URL, such as http://host:8321, without a path)"
        ),
        405 => format!(
            "the server does not take this request (405{reason}): check --http-url points at goremotecache serve"
        ),
        413 => format!(
            "the server refuses an entry this large (413{reason}): raise the server's --max-entry-size, or ignore it"
        ),
        507 => format!(
            "the server's storage is full (507{reason}): the write is dropped; give the server more room or a smaller --max-size so eviction keeps up"
        ),
        429 | 503 => format!(
            "the server is busy ({status}{reason}): nothing to fix if it passes; if it lasts, give the server more capacity"
        ),
        408 | 504 => format!(
            "the server timed out ({status}{reason}): check the network, or raise --remote-timeout"
        ),
        status if status >= 500 => {
            format!("the server failed ({status}{reason}): see the server's log")
        }
        status => format!(
            "the server answered {status}{reason}: check --http-url and --http-token, or run with --debug"
        ),
    }
}

/// The sentence for a request to an HTTP server that got no answer.
pub fn http_network(err: &reqwest::Error) -> String {
    let url = err.url().map(|u| u.to_string());
    let chain = Chain::of(&err.to_string(), std::error::Error::source(err));
    let text = chain.cause.clone();
    if let Some(sentence) = network(&chain, url.as_deref(), "--http-url", "") {
        return sentence;
    }
    if err.is_timeout() {
        return format!(
            "{} did not answer in time (timeout): check the network, or raise --remote-timeout",
            origin(url.as_deref())
        );
    }
    if err.is_body() || err.is_decode() {
        return format!(
            "the answer from {} broke off ({}): nothing to fix if it passes; if it lasts, check the server's log",
            origin(url.as_deref()),
            short(&text)
        );
    }
    format!(
        "the request to {} failed ({}): check --http-url",
        origin(url.as_deref()),
        short(&text)
    )
}

/// The network cause of a failure from the text of its error chain, if it is one.
fn network(
    chain: &Chain,
    url: Option<&str>,
    endpoint_flag: &str,
    host_from: &str,
) -> Option<String> {
    let lower = chain.all.to_ascii_lowercase();
    let text = chain.cause.as_str();
    let at = origin(url);
    let tls = lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("invalid peer")
        || lower.contains("tls")
        || lower.contains("handshake");
    let ca_fix = match endpoint_flag {
        "--http-url" => "give the server's CA with --http-ca-file",
        _ => "add the CA to the system's trust store (or SSL_CERT_FILE)",
    };
    if tls && (lower.contains("unknownissuer") || lower.contains("not trusted")) {
        return Some(format!(
            "the certificate of {at} is not trusted (unknown issuer): {ca_fix}, or check {endpoint_flag}"
        ));
    }
    if tls && (lower.contains("notvalidforname") || lower.contains("not valid for")) {
        return Some(format!(
            "the certificate of {at} is for another name: check the host name in {endpoint_flag}"
        ));
    }
    if tls && lower.contains("expired") {
        return Some(format!(
            "the certificate of {at} has expired: renew it on the server"
        ));
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("name or service not known")
        || lower.contains("no address")
    {
        return Some(format!(
            "the host name of {at} does not resolve (DNS): check {endpoint_flag}{host_from} and the network's DNS"
        ));
    }
    if lower.contains("connection refused") {
        return Some(format!(
            "nothing listens at {at} (connection refused): check {endpoint_flag} and that the server is running"
        ));
    }
    if lower.contains("connect") && (lower.contains("timed out") || lower.contains("timeout")) {
        return Some(format!(
            "cannot connect to {at} (connect timeout): check {endpoint_flag} and the network (firewall, proxy), or raise --remote-connect-timeout"
        ));
    }
    if tls {
        return Some(format!(
            "TLS with {at} failed ({}): check {endpoint_flag} (https:// for a TLS server, http:// for a plain one)",
            short(text)
        ));
    }
    if lower.contains("connection reset") || lower.contains("connection closed") {
        return Some(format!(
            "{at} closed the connection: nothing to fix if it passes; if it lasts, check the server"
        ));
    }
    if lower.contains("timed out") || lower.contains("timeout") {
        return Some(format!(
            "{at} did not answer in time (timeout): check the network and the store, or raise --remote-timeout"
        ));
    }
    if lower.contains("error sending request") || lower.contains("client error (connect)") {
        return Some(format!(
            "cannot reach {at} ({}): check {endpoint_flag} and the network",
            short(text)
        ));
    }
    None
}

/// `scheme://host:port` of a URL, for messages (no path, no query).
fn origin(url: Option<&str>) -> String {
    let Some(url) = url else {
        return "the store".into();
    };
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or(rest);
            format!("{scheme}://{host}")
        }
        None => url.to_string(),
    }
}

/// The text of an error and its sources: all of it, to look for a cause in, and the
/// deepest source alone, to quote (the outer ones repeat the URL and OpenDAL's context).
struct Chain {
    all: String,
    cause: String,
}

impl Chain {
    fn of(first: &str, mut source: Option<&(dyn std::error::Error + 'static)>) -> Self {
        let mut all = first.to_string();
        let mut cause = first.to_string();
        while let Some(err) = source {
            cause = err.to_string();
            let _ = write!(all, ": {cause}");
            source = err.source();
        }
        Self { all, cause }
    }
}

/// The value of `name: "..."` in a Debug-printed struct (OpenDAL's `S3Error { code: ... }`).
fn field(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("{name}: \""))? + name.len() + 3;
    let rest = &text[start..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string()).filter(|v| !v.is_empty())
}

/// The HTTP status in OpenDAL's response context (`status: 403`).
fn status_of(text: &str) -> Option<u16> {
    let start = text.find("status: ")? + 8;
    text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The request URL in OpenDAL's context (`uri: ...` of an answer, `url: ...` of a send).
fn context_url(text: &str) -> Option<String> {
    ["url: ", "uri: "].iter().find_map(|key| {
        let start = text.find(key)? + key.len();
        let rest = &text[start..];
        let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
        Some(rest[..end].to_string())
    })
}

/// The region S3 says the bucket is in: `... expecting 'eu-west-1'`.
fn expected_region(message: &str) -> Option<String> {
    let start = message.find("expecting '")? + 11;
    let rest = &message[start..];
    Some(rest[..rest.find('\'')?].to_string())
}

/// At most 120 characters of `text`, on one line.
fn short(text: &str) -> String {
    const MAX: usize = 120;
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() <= MAX {
        return line;
    }
    let mut cut = MAX;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use opendal::{Error, ErrorKind};

    fn s3_error(kind: ErrorKind, code: &str, message: &str, status: u16) -> Error {
        Error::new(
            kind,
            format!(
                "S3Error {{ code: \"{code}\", message: \"{message}\", resource: \"\", request_id: \"ABC\" }}"
            ),
        )
        .with_context("uri", "http://127.0.0.1:9000/b/v1/00")
        .with_context("response", format!("Parts {{ status: {status}, version: HTTP/1.1 }}"))
    }

    #[test]
    fn s3_codes_become_sentences_without_the_raw_struct() {
        let cases = [
            (
                s3_error(
                    ErrorKind::ConfigInvalid,
                    "NoSuchBucket",
                    "The specified bucket does not exist",
                    404,
                ),
                "the bucket does not exist (NoSuchBucket): create it, or check --s3-bucket and --s3-region",
                Some(Cause::Config),
            ),
            (
                s3_error(
                    ErrorKind::PermissionDenied,
                    "SignatureDoesNotMatch",
                    "x",
                    403,
                ),
                "the secret access key is wrong (SignatureDoesNotMatch)",
                Some(Cause::Denied),
            ),
            (
                s3_error(ErrorKind::PermissionDenied, "InvalidAccessKeyId", "x", 403),
                "the access key ID is not known",
                Some(Cause::Denied),
            ),
            (
                s3_error(
                    ErrorKind::PermissionDenied,
                    "AccessDenied",
                    "Access Denied",
                    403,
                ),
                "the credentials lack a permission (AccessDenied): grant s3:GetObject",
                Some(Cause::Denied),
            ),
            (
                s3_error(
                    ErrorKind::Unexpected,
                    "AuthorizationHeaderMalformed",
                    "the region 'us-east-1' is wrong; expecting 'eu-west-1'",
                    400,
                ),
                "the bucket is in another region (AuthorizationHeaderMalformed): set --s3-region eu-west-1",
                Some(Cause::Config),
            ),
            (
                s3_error(
                    ErrorKind::Unexpected,
                    "PermanentRedirect",
                    "use the endpoint",
                    301,
                ),
                "set --s3-region to the bucket's region",
                Some(Cause::Config),
            ),
            (
                s3_error(ErrorKind::Unexpected, "SlowDown", "Please reduce", 503),
                "the store asks to slow down (SlowDown)",
                Some(Cause::Transient),
            ),
            (
                s3_error(ErrorKind::Unexpected, "InternalError", "oops", 500),
                "the store failed on its side (InternalError, HTTP 500)",
                Some(Cause::Transient),
            ),
        ];
        for (err, expected, cause) in cases {
            let (sentence, got) = opendal(&err, &S3);
            assert!(sentence.contains(expected), "{sentence}");
            assert_eq!(got, cause, "{sentence}");
            assert!(
                !sentence.contains("request_id") && !sentence.contains("S3Error"),
                "{sentence}"
            );
        }
    }

    #[test]
    fn azure_refusals_name_the_azure_credentials_and_permissions() {
        let err = s3_error(
            ErrorKind::PermissionDenied,
            "AuthorizationFailure",
            "Server failed to authenticate the request.",
            403,
        );
        let (sentence, cause) = opendal(&err, &AZBLOB);
        assert!(
            sentence.starts_with(
                "the credentials were refused (AuthorizationFailure): check AZURE_STORAGE_KEY"
            ),
            "{sentence}"
        );
        assert!(
            sentence.contains("Storage Blob Data Contributor"),
            "{sentence}"
        );
        assert_eq!(cause, Some(Cause::Denied));
        let err = s3_error(
            ErrorKind::ConfigInvalid,
            "ContainerNotFound",
            "The specified container does not exist.",
            404,
        );
        let (sentence, _) = opendal(&err, &AZBLOB);
        assert!(
            sentence.starts_with(
                "the container does not exist (ContainerNotFound): create it, or check --azblob-container"
            ),
            "{sentence}"
        );
    }

    #[test]
    fn a_head_without_a_body_is_explained_from_its_status() {
        let err = Error::new(ErrorKind::PermissionDenied, "")
            .with_context("response", "Parts { status: 403, version: HTTP/1.1 }");
        let (sentence, cause) = opendal(&err, &S3);
        assert!(
            sentence.starts_with("the credentials lack a permission (403)"),
            "{sentence}"
        );
        assert_eq!(cause, Some(Cause::Denied));
    }

    #[test]
    fn network_failures_name_the_endpoint_and_the_option() {
        let chain = |text: &str| Chain {
            all: text.into(),
            cause: text.into(),
        };
        let refused = network(
            &chain("send http request: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)"),
            Some("http://127.0.0.1:1/b/v1/00"),
            "--s3-endpoint",
            S3.host_from,
        )
        .unwrap();
        assert_eq!(
            refused,
            "nothing listens at http://127.0.0.1:1 (connection refused): check --s3-endpoint and that the server is running"
        );
        let dns = network(
            &chain("dns error: failed to lookup address information"),
            Some("https://nope.invalid/x"),
            "--http-url",
            "",
        )
        .unwrap();
        assert!(
            dns.contains("does not resolve") && dns.contains("https://nope.invalid"),
            "{dns}"
        );
        let tls = network(
            &chain("invalid peer certificate: UnknownIssuer"),
            Some("https://h:1/v1/ac/00"),
            "--http-url",
            "",
        )
        .unwrap();
        assert!(
            tls.contains("not trusted") && tls.contains("--http-ca-file"),
            "{tls}"
        );
    }

    #[test]
    fn http_statuses_say_what_to_change() {
        assert!(http_status(401, "a valid bearer token is needed\n").contains("--http-token"));
        assert!(http_status(403, "this token may only read").contains("read-only"));
        assert!(
            http_status(403, "this token may not use namespace main").contains("--read-namespaces")
        );
        assert!(http_status(404, "").contains("--http-url"));
        assert!(http_status(507, "full").contains("storage is full"));
    }
}
