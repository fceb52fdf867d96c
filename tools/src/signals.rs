//! `augur replay --signals FILE`: every scored signal of a replay, for a backtest in pandas or
//! polars, as CSV or Parquet (by the file's extension: `.parquet` or `.pq` is Parquet).
//!
//! One row per outcome, in (symbol, timeframe, sequence) order. Columns: symbol, timeframe,
//! sequence, event_time_ms, event_id, method, signal (-1, 0, 1), confidence, p_short,
//! p_neutral, p_long (the ensemble), then `<member>_p_short`, `<member>_p_neutral`,
//! `<member>_p_long` per member (empty / null where the member did not answer), then
//! horizon_bars, label (-1, 0, 1) and realized_return.
use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use augur_actors::outcomes::Outcome;
use augur_actors::types::Ensemble;
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// One scored signal.
#[derive(Debug, Clone)]
pub struct Signal {
    pub symbol: String,
    pub timeframe: String,
    pub sequence: u64,
    pub event_time_ms: Option<i64>,
    pub event_id: String,
    pub method: Option<String>,
    pub signal: Option<i32>,
    pub confidence: Option<f32>,
    /// The ensemble's p_short, p_neutral, p_long.
    pub ensemble: [Option<f32>; 3],
    /// Per member of [`Signals::members`].
    pub members: Vec<[Option<f32>; 3]>,
    pub horizon_bars: u32,
    /// -1 short, 0 neutral, 1 long.
    pub label: i32,
    pub realized_return: f64,
}

/// The scored signals of a replay.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Member model ids, sorted.
    pub members: Vec<String>,
    pub rows: Vec<Signal>,
}

fn three(p: &[f32]) -> [Option<f32>; 3] {
    [p.first().copied(), p.get(1).copied(), p.get(2).copied()]
}

impl Signals {
    /// Joins each outcome with its prediction (by event id).
    pub fn new(predictions: &[Arc<Ensemble>], outcomes: &[Outcome]) -> Self {
        let by_id: HashMap<&str, &Ensemble> = predictions
            .iter()
            .map(|p| (p.event_id.as_str(), p.as_ref()))
            .collect();
        let mut members: Vec<String> = outcomes
            .iter()
            .flat_map(|o| o.outputs.iter().skip(1).map(|m| m.model_id.to_string()))
            .collect();
        members.sort();
        members.dedup();
        let mut rows: Vec<Signal> = outcomes
            .iter()
            .map(|o| {
                let e = by_id.get(o.event_id.as_str());
                let ens = o.outputs.first();
                Signal {
                    symbol: o.symbol.to_string(),
                    timeframe: o.timeframe.to_string(),
                    sequence: o.sequence,
                    event_time_ms: e.map(|e| e.event_time_ms),
                    event_id: o.event_id.clone(),
                    method: ens.map(|s| s.model_version.to_string()),
                    signal: e.map(|e| e.signal),
                    confidence: e.map(|e| e.confidence),
                    ensemble: three(ens.map(|s| s.probabilities.as_slice()).unwrap_or(&[])),
                    members: members
                        .iter()
                        .map(|m| {
                            let p = o.outputs.iter().skip(1).find(|x| *x.model_id == **m);
                            three(p.map(|x| x.probabilities.as_slice()).unwrap_or(&[]))
                        })
                        .collect(),
                    horizon_bars: o.horizon,
                    label: o.label as i32 - 1,
                    realized_return: o.realized_return,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.symbol, &a.timeframe, a.sequence).cmp(&(&b.symbol, &b.timeframe, b.sequence))
        });
        Signals { members, rows }
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = [
            "symbol",
            "timeframe",
            "sequence",
            "event_time_ms",
            "event_id",
            "method",
            "signal",
            "confidence",
            "p_short",
            "p_neutral",
            "p_long",
        ]
        .map(String::from)
        .to_vec();
        for m in &self.members {
            for p in ["p_short", "p_neutral", "p_long"] {
                c.push(format!("{m}_{p}"));
            }
        }
        c.extend(["horizon_bars", "label", "realized_return"].map(String::from));
        c
    }

    /// Writes CSV, or Parquet when the name ends in `.parquet` or `.pq`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".parquet") || name.ends_with(".pq") {
            self.write_parquet(path)
        } else {
            self.write_csv(path)
        }
    }

    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        writeln!(
            w,
            "{}",
            self.columns()
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(",")
        )?;
        let opt = |x: Option<String>| x.unwrap_or_default();
        for r in &self.rows {
            let mut row = vec![
                quote(&r.symbol),
                quote(&r.timeframe),
                r.sequence.to_string(),
                opt(r.event_time_ms.map(|x| x.to_string())),
                quote(&r.event_id),
                opt(r.method.as_deref().map(quote)),
                opt(r.signal.map(|x| x.to_string())),
                opt(r.confidence.map(|x| x.to_string())),
            ];
            for p in std::iter::once(&r.ensemble).chain(&r.members) {
                row.extend(p.iter().map(|x| opt(x.map(|x| x.to_string()))));
            }
            row.push(r.horizon_bars.to_string());
            row.push(r.label.to_string());
            row.push(r.realized_return.to_string());
            writeln!(w, "{}", row.join(","))?;
        }
        w.flush()?;
        Ok(())
    }

    /// Parquet with the same columns: UTF-8 strings, INT64 sequence and event time, INT32
    /// signal, label and horizon, FLOAT probabilities and confidence (as the service holds
    /// them), DOUBLE realized return; optional columns null where the CSV is empty.
    pub fn write_parquet(&self, path: &Path) -> anyhow::Result<()> {
        use parquet::basic::{LogicalType, Repetition, Type as Physical};
        let cols = self.columns();
        let n = cols.len();
        let mut fields = Vec::new();
        for (i, c) in cols.iter().enumerate() {
            let (physical, required) = match i {
                0 | 1 | 4 => (Physical::BYTE_ARRAY, true),
                2 => (Physical::INT64, true),
                3 => (Physical::INT64, false),
                5 => (Physical::BYTE_ARRAY, false),
                6 => (Physical::INT32, false),
                _ if i + 3 == n || i + 2 == n => (Physical::INT32, true),
                _ if i + 1 == n => (Physical::DOUBLE, true),
                _ => (Physical::FLOAT, false),
            };
            let mut t = parquet::schema::types::Type::primitive_type_builder(c, physical).with_repetition(
                if required {
                    Repetition::REQUIRED
                } else {
                    Repetition::OPTIONAL
                },
            );
            if physical == Physical::BYTE_ARRAY {
                t = t.with_logical_type(Some(LogicalType::String));
            }
            fields.push(Arc::new(
                t.build().with_context(|| format!("the Parquet column {c}"))?,
            ));
        }
        let schema = parquet::schema::types::Type::group_type_builder("signals")
            .with_fields(fields)
            .build()
            .context("the signals schema")?;
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let props = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))
            .context("starting the Parquet file")?;
        // One row group per 100,000 rows.
        for chunk in self.rows.chunks(100_000) {
            let mut g = w.next_row_group().context("a Parquet row group")?;
            let mut i = 0usize;
            while let Some(mut col) = g.next_column().context("a Parquet column")? {
                self.write_column(i, cols.len(), chunk, col.untyped())?;
                col.close().context("closing a Parquet column")?;
                i += 1;
            }
            g.close().context("closing a Parquet row group")?;
        }
        w.close().context("closing the Parquet file")?;
        Ok(())
    }

    fn write_column(
        &self,
        i: usize,
        n: usize,
        rows: &[Signal],
        col: &mut ColumnWriter<'_>,
    ) -> anyhow::Result<()> {
        fn opt<T: Copy>(xs: impl Iterator<Item = Option<T>>) -> (Vec<T>, Vec<i16>) {
            let mut v = Vec::new();
            let mut d = Vec::new();
            for x in xs {
                d.push(i16::from(x.is_some()));
                v.extend(x);
            }
            (v, d)
        }
        let bytes = |f: &dyn Fn(&Signal) -> &str| -> Vec<ByteArray> {
            rows.iter()
                .map(|r| ByteArray::from(f(r).as_bytes().to_vec()))
                .collect()
        };
        let wrong = || anyhow::anyhow!("Parquet column {i}: the writer's type differs from the schema's");
        match (i, col) {
            (0 | 1 | 4, ColumnWriter::ByteArrayColumnWriter(w)) => {
                let v = match i {
                    0 => bytes(&|r| &r.symbol),
                    1 => bytes(&|r| &r.timeframe),
                    _ => bytes(&|r| &r.event_id),
                };
                w.write_batch(&v, None, None)?;
            }
            (5, ColumnWriter::ByteArrayColumnWriter(w)) => {
                let mut v = Vec::new();
                let mut d = Vec::new();
                for r in rows {
                    d.push(i16::from(r.method.is_some()));
                    v.extend(r.method.as_ref().map(|m| ByteArray::from(m.as_bytes().to_vec())));
                }
                w.write_batch(&v, Some(&d), None)?;
            }
            (2, ColumnWriter::Int64ColumnWriter(w)) => {
                let v: Vec<i64> = rows
                    .iter()
                    .map(|r| i64::try_from(r.sequence).unwrap_or(i64::MAX))
                    .collect();
                w.write_batch(&v, None, None)?;
            }
            (3, ColumnWriter::Int64ColumnWriter(w)) => {
                let (v, d) = opt(rows.iter().map(|r| r.event_time_ms));
                w.write_batch(&v, Some(&d), None)?;
            }
            (6, ColumnWriter::Int32ColumnWriter(w)) => {
                let (v, d) = opt(rows.iter().map(|r| r.signal));
                w.write_batch(&v, Some(&d), None)?;
            }
            (i, ColumnWriter::Int32ColumnWriter(w)) if i + 3 == n || i + 2 == n => {
                let v: Vec<i32> = rows
                    .iter()
                    .map(|r| {
                        if i + 3 == n {
                            i32::try_from(r.horizon_bars).unwrap_or(i32::MAX)
                        } else {
                            r.label
                        }
                    })
                    .collect();
                w.write_batch(&v, None, None)?;
            }
            (i, ColumnWriter::DoubleColumnWriter(w)) if i + 1 == n => {
                let v: Vec<f64> = rows.iter().map(|r| r.realized_return).collect();
                w.write_batch(&v, None, None)?;
            }
            (7, ColumnWriter::FloatColumnWriter(w)) => {
                let (v, d) = opt(rows.iter().map(|r| r.confidence));
                w.write_batch(&v, Some(&d), None)?;
            }
            (i, ColumnWriter::FloatColumnWriter(w)) if i >= 8 => {
                let (set, k) = ((i - 8) / 3, (i - 8) % 3);
                let (v, d) = opt(rows.iter().map(|r| {
                    if set == 0 {
                        r.ensemble[k]
                    } else {
                        r.members.get(set - 1).and_then(|m| m[k])
                    }
                }));
                w.write_batch(&v, Some(&d), None)?;
            }
            _ => return Err(wrong()),
        }
        Ok(())
    }
}

/// A CSV field, quoted when it must be (RFC 4180).
pub(crate) fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
