//! Values across the interface: parameters bound as the Rust types Spin's driver binds (so a
//! mistyped one fails as on Spin), and result columns converted as Spin converts them
//! (ranges, intervals, decimals, dates, unsupported types).

use bytes::BytesMut;
use postgres_types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use super::v4;

/// A range parameter: bounds as (value, inclusive), `None` for an infinite side.
pub(super) enum RangeParam {
    I32(Option<(i32, bool)>, Option<(i32, bool)>),
    I64(Option<(i64, bool)>, Option<(i64, bool)>),
    Decimal(Option<(rust_decimal::Decimal, bool)>, Option<(rust_decimal::Decimal, bool)>),
}

// Postgres' binary range format (range_send): a flags byte, then each finite bound as a
// length-prefixed element. Written by hand: postgres-types has no range support.
pub(super) const RANGE_EMPTY: u8 = 0x01;
pub(super) const RANGE_LB_INC: u8 = 0x02;
pub(super) const RANGE_UB_INC: u8 = 0x04;
pub(super) const RANGE_LB_INF: u8 = 0x08;
pub(super) const RANGE_UB_INF: u8 = 0x10;

pub(super) type SqlError = Box<dyn std::error::Error + Sync + Send>;

pub(super) fn write_range<T: ToSql>(
    lower: &Option<(T, bool)>,
    upper: &Option<(T, bool)>,
    element: &Type,
    out: &mut BytesMut,
) -> Result<IsNull, SqlError> {
    use bytes::BufMut;
    let mut flags = 0;
    match lower {
        None => flags |= RANGE_LB_INF,
        Some((_, true)) => flags |= RANGE_LB_INC,
        Some((_, false)) => {}
    }
    match upper {
        None => flags |= RANGE_UB_INF,
        Some((_, true)) => flags |= RANGE_UB_INC,
        Some((_, false)) => {}
    }
    out.put_u8(flags);
    for (value, _) in [lower, upper].into_iter().flatten() {
        let mut buf = BytesMut::new();
        value.to_sql(element, &mut buf)?;
        out.put_i32(i32::try_from(buf.len())?);
        out.extend_from_slice(&buf);
    }
    Ok(IsNull::No)
}

/// Decodes a range's bounds with `element` decoding one bound; an empty range has none.
#[allow(clippy::type_complexity)]
pub(super) fn read_range<T>(
    raw: &[u8],
    element: impl Fn(&[u8]) -> Result<T, SqlError>,
) -> Result<(Option<(T, bool)>, Option<(T, bool)>), SqlError> {
    let (&flags, mut rest) = raw.split_first().ok_or("empty range value")?;
    if flags & RANGE_EMPTY != 0 {
        return Ok((None, None));
    }
    let mut bound = |infinite: u8, inclusive: u8| -> Result<Option<(T, bool)>, SqlError> {
        if flags & infinite != 0 {
            return Ok(None);
        }
        let (len, tail) = rest.split_at_checked(4).ok_or("truncated range")?;
        let len = usize::try_from(i32::from_be_bytes(len.try_into()?))?;
        let (value, tail) = tail.split_at_checked(len).ok_or("truncated range")?;
        rest = tail;
        Ok(Some((element(value)?, flags & inclusive != 0)))
    };
    let lower = bound(RANGE_LB_INF, RANGE_LB_INC)?;
    let upper = bound(RANGE_UB_INF, RANGE_UB_INC)?;
    Ok((lower, upper))
}

pub(super) fn kind(inclusive: bool) -> v4::RangeBoundKind {
    if inclusive {
        v4::RangeBoundKind::Inclusive
    } else {
        v4::RangeBoundKind::Exclusive
    }
}

pub(super) fn wit_bound<T, U>(b: Option<(T, bool)>, f: impl Fn(T) -> U) -> Option<(U, v4::RangeBoundKind)> {
    b.map(|(v, inc)| (f(v), kind(inc)))
}

pub(super) struct RangeValue(pub(super) v4::DbValue);

impl<'a> FromSql<'a> for RangeValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, SqlError> {
        Ok(RangeValue(match *ty {
            Type::INT4_RANGE => {
                let (l, u) = read_range(raw, |b| i32::from_sql(&Type::INT4, b))?;
                v4::DbValue::RangeInt32((wit_bound(l, |v| v), wit_bound(u, |v| v)))
            }
            Type::INT8_RANGE => {
                let (l, u) = read_range(raw, |b| i64::from_sql(&Type::INT8, b))?;
                v4::DbValue::RangeInt64((wit_bound(l, |v| v), wit_bound(u, |v| v)))
            }
            _ => {
                let (l, u) = read_range(raw, |b| rust_decimal::Decimal::from_sql(&Type::NUMERIC, b))?;
                v4::DbValue::RangeDecimal((wit_bound(l, |d| d.to_string()), wit_bound(u, |d| d.to_string())))
            }
        }))
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT4_RANGE | Type::INT8_RANGE | Type::NUM_RANGE)
    }
}

/// A range parameter of one element type; it binds only to that range type, as Spin's
/// (postgres_range) do.
macro_rules! range_param {
    ($name:ident, $variant:ident, $range:expr, $element:expr) => {
        #[derive(Debug)]
        struct $name(RangeParam);

        impl ToSql for $name {
            fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, SqlError> {
                match &self.0 {
                    RangeParam::$variant(l, u) => write_range(l, u, &$element, out),
                    _ => Err("range of another element type".into()),
                }
            }
            fn accepts(ty: &Type) -> bool {
                *ty == $range
            }
            to_sql_checked!();
        }
    };
}
range_param!(RangeI32, I32, Type::INT4_RANGE, Type::INT4);
range_param!(RangeI64, I64, Type::INT8_RANGE, Type::INT8);
range_param!(RangeDec, Decimal, Type::NUM_RANGE, Type::NUMERIC);

impl std::fmt::Debug for RangeParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RangeParam")
    }
}

/// `interval`, binding only to `interval`.
#[derive(Debug)]
pub(super) struct IntervalParam(v4::Interval);

impl ToSql for IntervalParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, SqlError> {
        use bytes::BufMut;
        out.put_i64(self.0.micros);
        out.put_i32(self.0.days);
        out.put_i32(self.0.months);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
    to_sql_checked!();
}

/// SQL NULL for a parameter of any type (a `None` of some Rust type would be refused by
/// parameters of other types).
#[derive(Debug)]
pub(super) struct Null;

impl ToSql for Null {
    fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, SqlError> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    fn to_sql_checked(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, SqlError> {
        Ok(IsNull::Yes)
    }
}

pub(super) fn bad(what: &str) -> v4::Error {
    v4::Error::BadParameter(what.to_owned())
}

pub(super) fn date(y: i32, m: u8, d: u8) -> Result<chrono::NaiveDate, v4::Error> {
    chrono::NaiveDate::from_ymd_opt(y, m.into(), d.into()).ok_or_else(|| bad("invalid date"))
}

pub(super) fn time(h: u8, m: u8, s: u8, ns: u32) -> Result<chrono::NaiveTime, v4::Error> {
    chrono::NaiveTime::from_hms_nano_opt(h.into(), m.into(), s.into(), ns).ok_or_else(|| bad("invalid time"))
}

pub(super) fn decimal(s: &str) -> Result<rust_decimal::Decimal, v4::Error> {
    rust_decimal::Decimal::from_str_exact(s).map_err(|_| bad("invalid decimal"))
}

pub(super) fn bound<T>(b: Option<(T, v4::RangeBoundKind)>) -> Option<(T, bool)> {
    b.map(|(v, k)| (v, k == v4::RangeBoundKind::Inclusive))
}

pub(super) type Param = Box<dyn ToSql + Send + Sync>;

/// One parameter as the Rust type Spin binds for its WIT variant. The statement is prepared,
/// so the server decides each parameter's type, and tokio-postgres then refuses a value of any
/// other type (`WrongType { postgres: Int8, rust: "i32" }`), exactly as under Spin: an `int32`
/// for a `bigint`, a `str` for a `uuid` or `numeric`, are errors here too.
pub(super) fn param(value: v4::ParameterValue) -> Result<Param, v4::Error> {
    use v4::ParameterValue as P;
    Ok(match value {
        P::DbNull => Box::new(Null),
        P::Boolean(v) => Box::new(v),
        P::Int8(v) => Box::new(v),
        P::Int16(v) => Box::new(v),
        P::Int32(v) => Box::new(v),
        P::Int64(v) => Box::new(v),
        P::Floating32(v) => Box::new(v),
        P::Floating64(v) => Box::new(v),
        P::Str(v) => Box::new(v),
        P::Binary(v) => Box::new(v),
        P::Date((y, m, d)) => Box::new(date(y, m, d)?),
        P::Time((h, mi, s, ns)) => Box::new(time(h, mi, s, ns)?),
        P::Datetime((y, mo, d, h, mi, s, ns)) => Box::new(date(y, mo, d)?.and_time(time(h, mi, s, ns)?)),
        P::Timestamp(secs) => Box::new(
            chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0).ok_or_else(|| bad("timestamp out of range"))?,
        ),
        P::Uuid(s) => Box::new(uuid::Uuid::parse_str(&s).map_err(|_| bad(&format!("invalid UUID {s}")))?),
        P::Jsonb(b) => Box::new(serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| bad("invalid JSON"))?),
        P::Decimal(s) => Box::new(decimal(&s)?),
        P::ArrayInt32(v) => Box::new(v),
        P::ArrayInt64(v) => Box::new(v),
        P::ArrayDecimal(v) => {
            Box::new(v.iter().map(|d| d.as_deref().map(decimal).transpose()).collect::<Result<Vec<_>, _>>()?)
        }
        P::ArrayStr(v) => Box::new(v),
        P::Interval(i) => Box::new(IntervalParam(i)),
        P::RangeInt32((l, u)) => Box::new(RangeI32(RangeParam::I32(bound(l), bound(u)))),
        P::RangeInt64((l, u)) => Box::new(RangeI64(RangeParam::I64(bound(l), bound(u)))),
        P::RangeDecimal((l, u)) => {
            let dec = |b: Option<(String, v4::RangeBoundKind)>| -> Result<_, v4::Error> {
                b.map(|(v, k)| Ok((decimal(&v)?, k == v4::RangeBoundKind::Inclusive))).transpose()
            };
            Box::new(RangeDec(RangeParam::Decimal(dec(l)?, dec(u)?)))
        }
    })
}

/// Any column's raw bytes, for types without a mapping (`unsupported(list<u8>)`).
pub(super) struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// `interval` in binary form.
pub(super) struct Interval(v4::Interval);

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw: [u8; 16] = raw.try_into()?;
        let micros = i64::from_be_bytes(raw[0..8].try_into()?);
        let days = i32::from_be_bytes(raw[8..12].try_into()?);
        let months = i32::from_be_bytes(raw[12..16].try_into()?);
        Ok(Interval(v4::Interval { micros, days, months }))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

/// A column's type in the interface, as Spin 4.0.2 names them (`name`, `json` and `"char"`
/// among the `other`s).
pub(super) fn data_type(ty: &Type) -> v4::DbDataType {
    use v4::DbDataType as D;
    match *ty {
        Type::BOOL => D::Boolean,
        Type::INT2 => D::Int16,
        Type::INT4 => D::Int32,
        Type::INT8 => D::Int64,
        Type::FLOAT4 => D::Floating32,
        Type::FLOAT8 => D::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => D::Str,
        Type::BYTEA => D::Binary,
        Type::DATE => D::Date,
        Type::TIME => D::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => D::Datetime,
        Type::UUID => D::Uuid,
        Type::JSONB => D::Jsonb,
        Type::NUMERIC => D::Decimal,
        Type::INT4_RANGE => D::RangeInt32,
        Type::INT8_RANGE => D::RangeInt64,
        Type::NUM_RANGE => D::RangeDecimal,
        Type::INT4_ARRAY => D::ArrayInt32,
        Type::INT8_ARRAY => D::ArrayInt64,
        Type::NUMERIC_ARRAY => D::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => D::ArrayStr,
        Type::INTERVAL => D::Interval,
        _ => D::Other(ty.name().to_owned()),
    }
}

pub(super) fn datetime(dt: chrono::NaiveDateTime) -> v4::DbValue {
    use chrono::{Datelike, Timelike};
    v4::DbValue::Datetime((
        dt.year(),
        dt.month() as u8,
        dt.day() as u8,
        dt.hour() as u8,
        dt.minute() as u8,
        dt.second() as u8,
        dt.nanosecond(),
    ))
}

/// One column's value as Spin 4.0.2 converts it. Where Spin fails, this fails the same way:
/// a `timestamptz` column is read as a naive timestamp, which the driver refuses, so a function
/// that selects one breaks on Spin and here alike (select `extract(epoch ...)` or text).
pub(super) fn value(row: &tokio_postgres::Row, i: usize) -> Result<v4::DbValue, tokio_postgres::Error> {
    use chrono::{Datelike, Timelike};
    use v4::DbValue as V;
    let ty = row.columns()[i].type_().clone();
    macro_rules! get {
        ($t:ty, $f:expr) => {
            row.try_get::<_, Option<$t>>(i)?.map($f).unwrap_or(V::DbNull)
        };
    }
    Ok(match ty {
        Type::BOOL => get!(bool, V::Boolean),
        Type::INT2 => get!(i16, V::Int16),
        Type::INT4 => get!(i32, V::Int32),
        Type::INT8 => get!(i64, V::Int64),
        Type::FLOAT4 => get!(f32, V::Floating32),
        Type::FLOAT8 => get!(f64, V::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => get!(String, V::Str),
        Type::BYTEA => get!(Vec<u8>, V::Binary),
        Type::DATE => get!(chrono::NaiveDate, |d| V::Date((d.year(), d.month() as u8, d.day() as u8))),
        Type::TIME => {
            get!(chrono::NaiveTime, |t| V::Time((t.hour() as u8, t.minute() as u8, t.second() as u8, t.nanosecond())))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => get!(chrono::NaiveDateTime, datetime),
        Type::UUID => get!(uuid::Uuid, |u| V::Uuid(u.to_string())),
        Type::JSONB => get!(serde_json::Value, |j| V::Jsonb(j.to_string().into_bytes())),
        Type::NUMERIC => get!(rust_decimal::Decimal, |d| V::Decimal(d.to_string())),
        Type::INT4_ARRAY => get!(Vec<Option<i32>>, V::ArrayInt32),
        Type::INT8_ARRAY => get!(Vec<Option<i64>>, V::ArrayInt64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => get!(Vec<Option<String>>, V::ArrayStr),
        Type::NUMERIC_ARRAY => get!(Vec<Option<rust_decimal::Decimal>>, |v| V::ArrayDecimal(
            v.into_iter().map(|d| d.map(|d| d.to_string())).collect()
        )),
        Type::INTERVAL => get!(Interval, |i| V::Interval(i.0)),
        Type::INT4_RANGE | Type::INT8_RANGE | Type::NUM_RANGE => get!(RangeValue, |r| r.0),
        _ => get!(Raw, |r| V::Unsupported(r.0)),
    })
}

/// A driver error as Spin reports it: the database's own error with its fields, anything else
/// (a parameter of the wrong type, a closed connection) as the error's debug text.
pub(super) fn query_error(e: tokio_postgres::Error) -> v4::Error {
    let flattened = format!("{e:?}");
    match e.as_db_error() {
        Some(db) => {
            let mut extras = Vec::new();
            let mut push = |k: &str, v: Option<&str>| {
                if let Some(v) = v {
                    extras.push((k.to_owned(), v.to_owned()));
                }
            };
            push("column", db.column());
            push("constraint", db.constraint());
            push("hint", db.hint());
            push("table", db.table());
            push("schema", db.schema());
            v4::Error::QueryFailed(v4::QueryError::DbError(v4::DbError {
                as_text: flattened,
                severity: db.severity().to_owned(),
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                extras,
            }))
        }
        None => v4::Error::QueryFailed(v4::QueryError::Text(flattened)),
    }
}

/// Roughly what a value holds, for the result bound.
pub(super) fn value_bytes(v: &v4::DbValue) -> usize {
    use v4::DbValue as V;
    16 + match v {
        V::Str(s) | V::Uuid(s) | V::Decimal(s) => s.len(),
        V::Binary(b) | V::Jsonb(b) | V::Unsupported(b) => b.len(),
        V::ArrayStr(a) => a.iter().map(|s| s.as_ref().map_or(0, String::len) + 8).sum(),
        V::ArrayDecimal(a) => a.iter().map(|s| s.as_ref().map_or(0, String::len) + 8).sum(),
        V::ArrayInt32(a) => a.len() * 8,
        V::ArrayInt64(a) => a.len() * 16,
        _ => 0,
    }
}

/// Most bytes one query's rows may hold (Spin's `MAX_HOST_BUFFERED_BYTES`).
pub(super) const MAX_RESULT_BYTES: usize = 128 << 20;
