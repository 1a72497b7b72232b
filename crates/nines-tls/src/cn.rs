//! The subject common names of a DER certificate, for
//! `--peer-cert-allowed-cn`. A small bounded DER walk: every length is
//! checked against what is left, so a hostile certificate yields no
//! name rather than a panic (and it is only read after the chain has been
//! verified against the CA).

/// One DER element: (tag, contents, what follows it).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3, id-at-commonName.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// Every CN attribute of the certificate's subject, in order.
pub fn common_names(cert: &[u8]) -> Vec<String> {
    subject(cert).map(names_in).unwrap_or_default()
}

fn subject(cert: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity: skipped.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, subject, _) = element(rest)? else {
        return None;
    };
    Some(subject)
}

fn names_in(subject: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut rdns = subject;
    while let Some((SET, mut set, rest)) = element(rdns) {
        rdns = rest;
        while let Some((SEQUENCE, attribute, next)) = element(set) {
            set = next;
            let Some((OID, oid, value)) = element(attribute) else {
                continue;
            };
            if oid != CN_OID {
                continue;
            }
            if let Some(name) = element(value).and_then(|(tag, v, _)| text(tag, v)) {
                names.push(name);
            }
        }
    }
    names
}

/// The directory string types a CN is written in.
fn text(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String.
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
        // BMPString: UTF-16BE.
        0x1e if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "nines");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_subject_cn() {
        assert_eq!(common_names(&cert_with_cn("member-1")), vec!["member-1"]);
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let none = params.self_signed(&key).unwrap().der().to_vec();
        assert!(common_names(&none).is_empty());
    }

    #[test]
    fn garbage_and_truncations_yield_nothing() {
        let der = cert_with_cn("member-1");
        for cut in 0..der.len() {
            // Truncated inputs: no panic, and no name unless the subject
            // survived whole (the outer lengths then still fail).
            let _ = common_names(&der[..cut]);
        }
        assert!(common_names(&[]).is_empty());
        assert!(common_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(common_names(&[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]).is_empty());
        let mut flipped = der.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
            let _ = common_names(&flipped);
        }
    }
}
