//! HTTPS for the host's listener: the certificate chain and key are read and checked once at
//! start (a missing file, an encrypted key, a key that does not match, a certificate out of its
//! validity stop the start with the file and the cause), then every accepted connection's
//! handshake runs in a task of its own, so that a slow or silent client holds up nobody else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 256;

/// The files the host serves HTTPS with: a PEM certificate chain (the host's certificate
/// first) and its PEM private key (PKCS#8, PKCS#1 or SEC1, not encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The server configuration these files make, checked as of `now`.
    pub fn server_config(&self, now: SystemTime) -> Result<Arc<ServerConfig>, String> {
        let chain = read_chain(&self.cert)?;
        check_validity(&self.cert, &chain[0], now)?;
        let key = read_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "the TLS key {} does not fit the certificate {} ({e}); give the key the \
                     certificate was issued for",
                    self.key.display(),
                    self.cert.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read(path, "certificate (--tls-cert)")?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "the TLS certificate {} is not valid PEM: {e}",
                path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "the TLS certificate {} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read(path, "key (--tls-key)")?;
    if String::from_utf8_lossy(&text).contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(format!(
            "the TLS key {} is encrypted with a password, which the host cannot ask for; \
             store it decrypted with restricted permissions (openssl pkey -in {0} -out KEY.pem; \
             chmod 600 KEY.pem)",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "the TLS key {} holds no private key (expected PEM \"-----BEGIN PRIVATE KEY-----\", \
             RSA or EC)",
            path.display()
        ),
        e => format!("the TLS key {} is not valid PEM: {e}", path.display()),
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}

/// Refuses a certificate that is not valid yet or any more: clients would refuse it on every
/// connection, so the host says so once, at start.
fn check_validity(path: &Path, cert: &CertificateDer<'_>, now: SystemTime) -> Result<(), String> {
    let (not_before, not_after) = validity(cert).ok_or_else(|| {
        format!(
            "the TLS certificate {} is not a readable X.509 certificate",
            path.display()
        )
    })?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > not_after {
        return Err(format!(
            "the TLS certificate {} expired on {} (UTC); renew it",
            path.display(),
            utc(not_after)
        ));
    }
    if now < not_before {
        return Err(format!(
            "the TLS certificate {} is not valid before {} (UTC); check the clock or the certificate",
            path.display(),
            utc(not_before)
        ));
    }
    Ok(())
}

/// A certificate's validity (not before, not after), in seconds since the epoch: the fifth
/// field of its TBSCertificate (RFC 5280 §4.1), read from its DER.
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    const SEQUENCE: u8 = 0x30;
    let (certificate, _) = der(cert, SEQUENCE)?;
    let (mut tbs, _) = der(certificate, SEQUENCE)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs, 0xa0)?.1; // [0] version
    }
    let (_, rest) = der(tbs, 0x02)?; // serial number
    let (_, rest) = der(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = der(rest, SEQUENCE)?; // issuer
    let (validity, _) = der(rest, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// One DER element of tag `tag` at the start of `input`: its contents and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let bytes = (first & 0x7f) as usize;
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let length = rest[..bytes]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | b as usize);
        (length, &rest[bytes..])
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// A UTCTime (YYMMDDHHMMSSZ; years 50–99 are 19xx) or GeneralizedTime (YYYYMMDDHHMMSSZ), in
/// seconds since the epoch, and what follows it.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest, year_digits) = match input.first()? {
        0x17 => der(input, 0x17).map(|(t, r)| (t, r, 2))?,
        0x18 => der(input, 0x18).map(|(t, r)| (t, r, 4))?,
        _ => return None,
    };
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if text.len() != year_digits + 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number = |from: usize, len: usize| text[from..from + len].parse::<i64>().ok();
    let mut year = number(0, year_digits)?;
    if year_digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let at = year_digits;
    let (month, day) = (number(at, 2)?, number(at + 2, 2)?);
    let (hour, minute, second) = (number(at + 4, 2)?, number(at + 6, 2)?, number(at + 8, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some((seconds, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `YYYY-MM-DD HH:MM:SS` of seconds since the epoch.
fn utc(seconds: i64) -> String {
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // The inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        time / 3_600,
        time % 3_600 / 60,
        time % 60
    )
}

/// A listener whose connections come out of their TLS handshake: what `axum::serve` takes in
/// place of a `TcpListener`.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` in a task of its own, which ends when this listener is dropped.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let (handshaken, waiting) = mpsc::channel(ACCEPTED_BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    () = handshaken.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let handshaken = handshaken.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handshaken.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            handshaken: waiting,
            local_addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task ended, which it does only once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59");
        for seconds in [0, 86_399, 1_700_000_000, 2_524_608_000, 253_402_300_799] {
            let text = utc(seconds);
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            let der = [&[0x18, 15][..], digits.as_bytes(), b"Z"].concat();
            assert_eq!(time(&der).map(|(t, _)| t), Some(seconds), "{text}");
        }
    }

    #[test]
    fn utc_time_reads_two_digit_years_as_rfc_5280_says() {
        let utc_time = |text: &str| {
            let der = [&[0x17, text.len() as u8][..], text.as_bytes()].concat();
            time(&der).map(|(seconds, _)| seconds)
        };
        assert_eq!(utc_time("491231235959Z"), Some(2_524_607_999));
        assert_eq!(utc_time("500101000000Z"), Some(-631_152_000));
        assert_eq!(utc_time("5001010000Z"), None);
        assert_eq!(utc_time("501301000000Z"), None);
    }

    #[test]
    fn a_truncated_certificate_has_no_validity() {
        assert_eq!(validity(&[]), None);
        assert_eq!(validity(&[0x30, 0x82, 0x01]), None);
        assert_eq!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
