//! `POST /probe` with `{"sql": "...", "params": [{"int32": 5}, {"str": "x"}, ...]}`: runs the
//! statement through `spin:postgres@4` and answers `{"rows": n}` or `{"error": "<the runtime's
//! error, debug-printed>"}`. Only the tests serve it (tests/probe/spin.toml), so that the
//! bundled host's and real Spin's answers to the same call can be compared byte for byte.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::pg4::{Connection, ParameterValue};

fn parameter(value: &serde_json::Value) -> anyhow::Result<ParameterValue> {
    let (kind, v) = value
        .as_object()
        .and_then(|o| o.iter().next())
        .ok_or_else(|| anyhow::anyhow!("a parameter is {{type: value}}"))?;
    let int = || v.as_i64().ok_or_else(|| anyhow::anyhow!("{kind} takes a number"));
    Ok(match kind.as_str() {
        "int32" => ParameterValue::Int32(i32::try_from(int()?)?),
        "int64" => ParameterValue::Int64(int()?),
        "str" => ParameterValue::Str(v.as_str().unwrap_or_default().to_owned()),
        "null" => ParameterValue::DbNull,
        other => anyhow::bail!("unknown parameter type {other}"),
    })
}

fn run(req: &Request) -> anyhow::Result<serde_json::Value> {
    let body: serde_json::Value = serde_json::from_slice(req.body())?;
    let sql = body["sql"].as_str().ok_or_else(|| anyhow::anyhow!("sql is required"))?;
    let params = body["params"]
        .as_array()
        .map(|p| p.iter().map(parameter).collect::<anyhow::Result<Vec<_>>>())
        .transpose()?
        .unwrap_or_default();
    let url = spin_sdk::variables::get("db_url")?;
    let conn = Connection::open(&url).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(match conn.query(sql, &params) {
        Ok(rows) => serde_json::json!({"rows": rows.rows.len()}),
        Err(e) => serde_json::json!({"error": format!("{e:?}")}),
    })
}

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let (status, body) = match run(&req) {
        Ok(v) => (200, v),
        Err(e) => (400, serde_json::json!({"probe_error": e.to_string()})),
    };
    Ok(Response::builder().status(status).header("content-type", "application/json").body(body.to_string()).build())
}
