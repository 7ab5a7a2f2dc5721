//! BER to DER for CMS envelopes. RFC 5652 allows BER outside the signed attributes, and Apple's
//! signers write indefinite lengths and segmented OCTET STRINGs; the `der` crate reads DER only.
//! Bounded in depth and in children per value, so hostile input stays cheap (the `der` crate
//! sorts every SET OF it decodes, quadratically).

use super::EnrollError;

const MAX_DEPTH: usize = 32;
/// More than any X.509 certificate or CMS structure a device sends needs.
const MAX_CHILDREN: usize = 128;
const OCTET_STRING: u8 = 0x04;
const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
const CONSTRUCTED: u8 = 0x20;

/// One value: its identifier octets and either its content or its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub identifier: &'a [u8],
    pub body: Body<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Primitive(std::borrow::Cow<'a, [u8]>),
    Constructed(Vec<Node<'a>>),
}

fn bad(why: impl Into<String>) -> EnrollError {
    EnrollError::Cms(format!("BER: {}", why.into()))
}

/// Parses one BER value that spans the whole input.
pub fn parse(input: &[u8]) -> Result<Node<'_>, EnrollError> {
    let (node, rest) = value(input, 0)?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the value", rest.len())));
    }
    Ok(node)
}

/// The DER encoding of a parsed value (definite minimal lengths, OCTET STRINGs in one piece).
pub fn to_der(node: &Node<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(node, &mut out);
    out
}

fn value(input: &[u8], depth: usize) -> Result<(Node<'_>, &[u8]), EnrollError> {
    if depth > MAX_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_DEPTH}")));
    }
    let first = *input.first().ok_or_else(|| bad("truncated identifier"))?;
    let mut id_len = 1;
    if first & 0x1f == 0x1f {
        // High tag number: continuation bytes while bit 8 is set (at most four).
        loop {
            let byte = *input.get(id_len).ok_or_else(|| bad("truncated tag"))?;
            id_len += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if id_len > 5 {
                return Err(bad("tag number too large"));
            }
        }
    }
    let identifier = &input[..id_len];
    let constructed = first & CONSTRUCTED != 0;
    let rest = &input[id_len..];
    let length_byte = *rest.first().ok_or_else(|| bad("truncated length"))?;
    let rest = &rest[1..];
    let (content, after, indefinite) = match length_byte {
        0x80 => {
            if !constructed {
                return Err(bad("indefinite length on a primitive value"));
            }
            (rest, &rest[..0], true)
        }
        short if short < 0x80 => {
            let n = usize::from(short);
            if rest.len() < n {
                return Err(bad("value longer than the input"));
            }
            (&rest[..n], &rest[n..], false)
        }
        long => {
            let count = usize::from(long & 0x7f);
            if count > 4 || rest.len() < count {
                return Err(bad("length too large or truncated"));
            }
            let n = rest[..count]
                .iter()
                .fold(0usize, |n, b| (n << 8) | usize::from(*b));
            let rest = &rest[count..];
            if rest.len() < n {
                return Err(bad("value longer than the input"));
            }
            (&rest[..n], &rest[n..], false)
        }
    };
    if !constructed {
        let node = Node {
            identifier,
            body: Body::Primitive(std::borrow::Cow::Borrowed(content)),
        };
        return Ok((node, after));
    }
    let mut children = Vec::new();
    let mut remaining = content;
    loop {
        if indefinite {
            if remaining.starts_with(&[0, 0]) {
                remaining = &remaining[2..];
                break;
            }
            if remaining.is_empty() {
                return Err(bad("indefinite length without end-of-contents"));
            }
        } else if remaining.is_empty() {
            break;
        }
        if children.len() == MAX_CHILDREN {
            return Err(bad(format!(
                "more than {MAX_CHILDREN} elements in one value"
            )));
        }
        let (child, next) = value(remaining, depth + 1)?;
        children.push(child);
        remaining = next;
    }
    let after = if indefinite { remaining } else { after };
    // A segmented OCTET STRING becomes one primitive OCTET STRING.
    if identifier == [OCTET_STRING_CONSTRUCTED] {
        let mut joined = Vec::new();
        flatten_octets(&children, &mut joined)?;
        return Ok((
            Node {
                identifier: &[OCTET_STRING],
                body: Body::Primitive(std::borrow::Cow::Owned(joined)),
            },
            after,
        ));
    }
    Ok((
        Node {
            identifier,
            body: Body::Constructed(children),
        },
        after,
    ))
}

fn flatten_octets(children: &[Node<'_>], out: &mut Vec<u8>) -> Result<(), EnrollError> {
    for child in children {
        match (&child.body, child.identifier) {
            (Body::Primitive(bytes), [OCTET_STRING]) => out.extend_from_slice(bytes),
            _ => return Err(bad("a segment of an OCTET STRING is not an OCTET STRING")),
        }
    }
    Ok(())
}

fn encode(node: &Node<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(node.identifier);
    match &node.body {
        Body::Primitive(content) => {
            length(content.len(), out);
            out.extend_from_slice(content);
        }
        Body::Constructed(children) => {
            let mut inner = Vec::new();
            for child in children {
                encode(child, &mut inner);
            }
            length(inner.len(), out);
            out.extend_from_slice(&inner);
        }
    }
}

fn length(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// The signer's signed attributes as the signature covers them: the DER of the `[0] IMPLICIT`
/// field with the SET OF tag, exactly in the order the signer wrote them (the `der` crate
/// re-sorts when it decodes).
pub fn signed_attributes(content_info: &Node<'_>) -> Option<Vec<u8>> {
    fn children<'n, 'a>(node: &'n Node<'a>) -> Option<&'n [Node<'a>]> {
        match &node.body {
            Body::Constructed(children) => Some(children),
            Body::Primitive(_) => None,
        }
    }
    let content_info = children(content_info)?;
    let explicit = children(content_info.get(1)?)?;
    let signed_data = children(explicit.first()?)?;
    let signer_infos = children(signed_data.last()?)?;
    let signer_info = children(signer_infos.first()?)?;
    let attributes = signer_info.get(3).filter(|n| n.identifier == [0xa0])?;
    let mut der = to_der(attributes);
    der[0] = 0x31;
    Some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indefinite_lengths_and_segmented_octet_strings_become_der() {
        // SEQUENCE (indefinite) { OCTET STRING constructed (indefinite) { "ab", "c" }, NULL }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x05,
            0x00, 0x00, 0x00,
        ];
        let der = to_der(&parse(&ber).expect("valid BER"));
        assert_eq!(der, [0x30, 0x07, 0x04, 0x03, b'a', b'b', b'c', 0x05, 0x00]);
        // DER stays as it is.
        assert_eq!(to_der(&parse(&der).expect("valid DER")), der);
    }

    #[test]
    fn long_lengths_are_minimal_in_der() {
        let mut ber = vec![0x04, 0x82, 0x00, 0x81];
        ber.extend([7u8; 0x81]);
        let der = to_der(&parse(&ber).expect("valid BER"));
        assert_eq!(&der[..3], &[0x04, 0x81, 0x81]);
        assert_eq!(der.len(), 3 + 0x81);
    }

    #[test]
    fn hostile_shapes_are_refused() {
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend([0x30, 0x80]);
        }
        let wide: Vec<u8> = [0x31, 0x82, 0x01, 0x2c]
            .into_iter()
            .chain(std::iter::repeat_n([0x05, 0x00], 150).flatten())
            .collect();
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x80],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x30, 0x05, 0x05, 0x00],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
            &[0x1f, 0x81, 0x81, 0x81, 0x81, 0x81, 0x01, 0x00],
            &[0x24, 0x80, 0x05, 0x00, 0x00, 0x00],
            &[0x05, 0x00, 0x00],
            &deep,
            &wide,
        ] {
            assert!(parse(input).is_err(), "{input:02x?}");
        }
    }
}
