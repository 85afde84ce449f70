//! Whether a handler's answer is a `Result`, told by its serde data model,
//! not by its type's name (`std::any::type_name` is not stable).
//!
//! serde serializes `Result<T, E>` as the newtype variant `Ok` or `Err` of
//! an enum named `Result`. [`as_result`] serializes the answer's top level
//! with a serializer that accepts exactly that and refuses anything else,
//! so a user type that merely looks like a result in JSON (a struct with an
//! `Err` field, an enum of another name) is answered as it is.

use serde::Serialize;
use serde::ser::{self, Impossible};

/// `Some(Ok(v))` / `Some(Err(e))` (the payload encoded as JSON, straight
/// into bytes) when `value` serializes as a `Result`, else `None`.
pub(super) fn as_result<T: Serialize + ?Sized>(value: &T) -> Option<Result<Vec<u8>, Vec<u8>>> {
    value.serialize(Probe).ok()
}

/// The one refusal: "not a `Result`" (or its payload does not encode).
#[derive(Debug)]
struct NotResult;

impl std::fmt::Display for NotResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a Result")
    }
}

impl std::error::Error for NotResult {}

impl ser::Error for NotResult {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        NotResult
    }
}

struct Probe;

type Answer = Result<Vec<u8>, Vec<u8>>;

macro_rules! refuse {
    ($($name:ident($($t:ty),*)),* $(,)?) => {$(
        fn $name(self $(, _: $t)*) -> Result<Answer, NotResult> {
            Err(NotResult)
        }
    )*};
}

impl ser::Serializer for Probe {
    type Ok = Answer;
    type Error = NotResult;
    type SerializeSeq = Impossible<Answer, NotResult>;
    type SerializeTuple = Impossible<Answer, NotResult>;
    type SerializeTupleStruct = Impossible<Answer, NotResult>;
    type SerializeTupleVariant = Impossible<Answer, NotResult>;
    type SerializeMap = Impossible<Answer, NotResult>;
    type SerializeStruct = Impossible<Answer, NotResult>;
    type SerializeStructVariant = Impossible<Answer, NotResult>;

    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Answer, NotResult> {
        Err(NotResult)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Answer, NotResult> {
        Err(NotResult)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Answer, NotResult> {
        if name != "Result" {
            return Err(NotResult);
        }
        let inner = serde_json::to_vec(value).map_err(|_| NotResult)?;
        match variant {
            "Ok" => Ok(Ok(inner)),
            "Err" => Ok(Err(inner)),
            _ => Err(NotResult),
        }
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotResult> {
        Err(NotResult)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotResult> {
        Err(NotResult)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotResult> {
        Err(NotResult)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotResult> {
        Err(NotResult)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotResult> {
        Err(NotResult)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotResult> {
        Err(NotResult)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotResult> {
        Err(NotResult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct LooksLikeOne {
        #[serde(rename = "Err")]
        err: u32,
    }

    #[derive(Serialize)]
    enum Outcome {
        Err(u32),
    }

    #[test]
    fn only_a_result_is_taken_apart() {
        let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
        let ok: Result<u32, String> = Ok(3);
        assert_eq!(as_result(&ok), Some(Ok(json(json!(3)))));
        let err: Result<u32, String> = Err("out of stock".into());
        assert_eq!(as_result(&err), Some(Err(json(json!("out of stock")))));
        let nested: Result<Option<Vec<u8>>, ()> = Ok(Some(vec![1]));
        assert_eq!(as_result(&nested), Some(Ok(json(json!([1])))));
        // answers that look like a result in JSON are not one
        assert_eq!(as_result(&LooksLikeOne { err: 1 }), None);
        assert_eq!(as_result(&Outcome::Err(1)), None);
        assert_eq!(
            as_result(&std::collections::BTreeMap::from([("Ok", 1)])),
            None
        );
        assert_eq!(as_result(&7u64), None);
        assert_eq!(as_result(&Some(1)), None);
    }
}
