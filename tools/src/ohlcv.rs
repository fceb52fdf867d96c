//! `augur replay --ohlcv`: a plain OHLCV file as the input of a replay, so that a desk can
//! score the models on its own bars with no feature pipeline of its own.
//!
//! - **Formats:** CSV (gzip'd when the name ends in `.gz`) or Parquet (`.parquet`, `.pq`;
//!   uncompressed, snappy, gzip or zstd pages, as pandas, pyarrow and polars write them).
//! - **Columns** (names case-insensitive, any order, others ignored): `open`, `high`, `low`,
//!   `close`, `volume`; optionally `symbol` (or `ticker`), and a bar time `time` (or `date`,
//!   `datetime`, `timestamp`).
//! - **Times:** `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.fff]]` (or with `T`, an optional `Z`),
//!   `DD.MM.YYYY HH:MM:SS[.fff]`, UTC; or Unix epoch numbers (seconds, milliseconds,
//!   microseconds or nanoseconds, told apart by size); Parquet dates and timestamps.
//! - **The features** are computed by the feed's own code ([`crate::feed::vectors`], ta-v1 in
//!   Rust, pinned bit-equal to the trainer), so a replay from bars has no train/serve skew.
//! - **Event time** of a vector = bar time + one timeframe (the bar's close), as
//!   `models/train/export_replay.py` stamps the committed stream; 0 without a time column.
//!
//! Every problem of a file is listed (up to 20), with its line or row.
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use anyhow::Context as _;
use augur_service::pb;
use parquet::basic::{ConvertedType, Repetition, Type as Physical};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use prost::Message as _;

use crate::feed::{Series, vectors};

/// The bars of one symbol, in time order (file order without a time column).
#[derive(Debug, Clone)]
pub struct Bars {
    pub symbol: String,
    /// Bar open times, Unix ms (None: the file has no time column).
    pub times_ms: Option<Vec<i64>>,
    /// open, high, low, close, volume.
    pub rows: Vec<[f64; 5]>,
}

/// One cell as read, before it is interpreted.
#[derive(Debug, Clone)]
enum Cell {
    Text(String),
    Num(f64),
    /// An integer: an epoch as a time, a number as a price or volume.
    Int(i64),
    TimeMs(i64),
    Null,
}

struct Table {
    columns: Vec<String>,
    /// (line or row number for messages, cells in `columns` order).
    rows: Vec<(usize, Vec<Cell>)>,
}

const MAX_PROBLEMS: usize = 20;

/// Reads a CSV or Parquet OHLCV file into bars per symbol (sorted by symbol). `symbol` names
/// the bars of a file without a symbol column (default: the file's stem).
pub fn read(path: &Path, symbol: Option<&str>) -> anyhow::Result<Vec<Bars>> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let lower = name.to_ascii_lowercase();
    let table = if lower.ends_with(".parquet") || lower.ends_with(".pq") {
        // The parquet crate panics on some corrupt files (a negative column chunk offset in
        // the footer): that is an error about the file, not a crash.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let read = std::panic::catch_unwind(|| read_parquet(path));
        std::panic::set_hook(hook);
        read.map_err(|_| anyhow::anyhow!("{}: a corrupt Parquet file (its reader gave up)", path.display()))??
    } else {
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let text = if lower.ends_with(".gz") {
            let mut s = String::new();
            // Every gzip member (concatenated files are one stream), and no more text than a
            // bound: a gzip bomb is refused, not unpacked.
            let n = flate2::read::MultiGzDecoder::new(&raw[..])
                .take(MAX_TEXT + 1)
                .read_to_string(&mut s)
                .with_context(|| format!("gunzip {}", path.display()))?;
            anyhow::ensure!(
                n as u64 <= MAX_TEXT,
                "{}: more than {} MB of text",
                path.display(),
                MAX_TEXT >> 20
            );
            s
        } else {
            anyhow::ensure!(
                raw.len() as u64 <= MAX_TEXT,
                "{}: more than {} MB of text",
                path.display(),
                MAX_TEXT >> 20
            );
            String::from_utf8(raw).with_context(|| format!("{} is not UTF-8 text", path.display()))?
        };
        read_csv(&text)
    };
    // The file's name without the extensions this reads (BRK.B.csv is BRK.B).
    let stem = [".csv.gz", ".csv", ".gz", ".parquet", ".pq", ".txt"]
        .iter()
        .find_map(|e| lower.ends_with(e).then(|| &name[..name.len() - e.len()]))
        .unwrap_or(&name);
    let stem = if stem.is_empty() { "SYMBOL" } else { stem };
    bars(&table, symbol.unwrap_or(stem)).map_err(|p| {
        anyhow::anyhow!(
            "{}: {} problem(s):\n  {}",
            path.display(),
            p.len(),
            p.join("\n  ")
        )
    })
}

/// The most text a CSV may hold (after gunzip).
const MAX_TEXT: u64 = 2 << 30;

fn read_csv(text: &str) -> Table {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let columns = lines
        .next()
        .map(|(_, h)| split_csv(h.trim_start_matches('\u{feff}')))
        .unwrap_or_default();
    let rows = lines
        .map(|(i, l)| (i + 1, split_csv(l).into_iter().map(Cell::Text).collect()))
        .collect();
    Table { columns, rows }
}

/// One CSV line's fields (RFC 4180 quotes; a field is trimmed of surrounding spaces).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur).trim().to_string()),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

fn read_parquet(path: &Path) -> anyhow::Result<Table> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema();
    // Only the columns this reads, each of a type it converts: the record reader of the
    // parquet crate gives up (a panic) on types it has no conversion for.
    let mut keep = Vec::new();
    let mut problems = Vec::new();
    for f in schema.get_fields() {
        if role(f.name()).is_none() {
            continue;
        }
        let info = f.get_basic_info();
        if !f.is_primitive() || (info.has_repetition() && info.repetition() == Repetition::REPEATED) {
            problems.push(format!(
                "column {:?} is nested or repeated; a flat column is needed",
                f.name()
            ));
            continue;
        }
        let ok = matches!(
            (f.get_physical_type(), info.converted_type()),
            (Physical::DOUBLE | Physical::FLOAT | Physical::INT96, _)
                | (
                    Physical::INT32,
                    ConvertedType::NONE
                        | ConvertedType::INT_8
                        | ConvertedType::INT_16
                        | ConvertedType::INT_32
                        | ConvertedType::UINT_8
                        | ConvertedType::UINT_16
                        | ConvertedType::UINT_32
                        | ConvertedType::DATE,
                )
                | (
                    Physical::INT64,
                    ConvertedType::NONE
                        | ConvertedType::INT_64
                        | ConvertedType::UINT_64
                        | ConvertedType::TIMESTAMP_MILLIS
                        | ConvertedType::TIMESTAMP_MICROS,
                )
                | (Physical::BYTE_ARRAY, ConvertedType::UTF8 | ConvertedType::ENUM)
        );
        if ok {
            keep.push(f.clone());
        } else {
            problems.push(format!(
                "column {:?} has type {} ({}); numbers (float, double, integers), UTF-8 text, dates and timestamps are read",
                f.name(),
                f.get_physical_type(),
                info.converted_type()
            ));
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}: {}", path.display(), problems.join("; "));
    // An INT64 timestamp in nanoseconds has no legacy converted type: its unit is in the
    // logical type only, and the record reader hands it over as a plain integer.
    let nanos: Vec<bool> = keep
        .iter()
        .map(|f| {
            matches!(
                f.get_basic_info().logical_type_ref(),
                Some(parquet::basic::LogicalType::Timestamp(t)) if t.unit == parquet::basic::TimeUnit::NANOS
            )
        })
        .collect();
    let columns: Vec<String> = keep.iter().map(|f| f.name().to_string()).collect();
    let projection = parquet::schema::types::Type::group_type_builder(schema.name())
        .with_fields(keep)
        .build()
        .context("the Parquet projection")?;
    let mut rows = Vec::new();
    for (i, row) in reader
        .get_row_iter(Some(projection))
        .with_context(|| format!("reading {}", path.display()))?
        .enumerate()
    {
        let row = row.with_context(|| format!("{} row {}", path.display(), i + 1))?;
        let mut cells = Vec::new();
        for (j, (name, field)) in row.get_column_iter().enumerate() {
            if columns.get(j) != Some(name) {
                anyhow::bail!(
                    "{} row {}: columns differ from the schema's",
                    path.display(),
                    i + 1
                );
            }
            cells.push(match field {
                Field::Long(x) if nanos[j] => Cell::TimeMs(x.div_euclid(1_000_000)),
                Field::Null => Cell::Null,
                Field::Float(x) => Cell::Num(f64::from(*x)),
                Field::Double(x) => Cell::Num(*x),
                Field::Byte(x) => Cell::Int(i64::from(*x)),
                Field::Short(x) => Cell::Int(i64::from(*x)),
                Field::Int(x) => Cell::Int(i64::from(*x)),
                Field::Long(x) => Cell::Int(*x),
                Field::UByte(x) => Cell::Int(i64::from(*x)),
                Field::UShort(x) => Cell::Int(i64::from(*x)),
                Field::UInt(x) => Cell::Int(i64::from(*x)),
                Field::ULong(x) => i64::try_from(*x).map(Cell::Int).unwrap_or(Cell::Num(*x as f64)),
                Field::Date(d) => Cell::TimeMs(i64::from(*d) * 86_400_000),
                Field::TimestampMillis(t) => Cell::TimeMs(*t),
                Field::TimestampMicros(t) => Cell::TimeMs(t.div_euclid(1000)),
                Field::Str(s) => Cell::Text(s.clone()),
                other => Cell::Text(other.to_string()),
            });
        }
        rows.push((i + 1, cells));
    }
    Ok(Table { columns, rows })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Price(usize),
    Symbol,
    Time,
}

fn role(column: &str) -> Option<Role> {
    Some(match column.trim().to_ascii_lowercase().as_str() {
        "open" => Role::Price(0),
        "high" => Role::Price(1),
        "low" => Role::Price(2),
        "close" => Role::Price(3),
        "volume" => Role::Price(4),
        "symbol" | "ticker" => Role::Symbol,
        "time" | "date" | "datetime" | "timestamp" => Role::Time,
        _ => return None,
    })
}

fn bars(table: &Table, default_symbol: &str) -> Result<Vec<Bars>, Vec<String>> {
    let mut problems = Vec::new();
    let lower: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let find = |r: Role| table.columns.iter().position(|c| role(c) == Some(r));
    let mut price = [0usize; 5];
    for (k, name) in ["open", "high", "low", "close", "volume"].iter().enumerate() {
        match find(Role::Price(k)) {
            Some(i) => price[k] = i,
            None => {
                let mut cols: String = format!("{:?}", table.columns).chars().take(200).collect();
                if cols.len() >= 200 {
                    cols.push_str("...");
                }
                problems.push(format!("no {name:?} column (columns: {cols})"))
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let sym_col = find(Role::Symbol);
    // A `date` column and a `time` column together are one time (intraday files).
    let date_col = lower.iter().position(|c| c == "date");
    let clock_col = lower.iter().position(|c| c == "time");
    let (time_col, clock_col) = match (date_col, clock_col) {
        (Some(d), Some(t)) => (Some(d), Some(t)),
        _ => (find(Role::Time), None),
    };
    // Epoch numbers have one unit per column, told by the largest (a 1971 time in ms is not
    // a time in s).
    let unit = time_col.map(|i| {
        let most = table
            .rows
            .iter()
            .filter_map(|(_, c)| match c.get(i) {
                Some(Cell::Int(x)) if !is_yyyymmdd(*x) => Some(x.unsigned_abs()),
                Some(Cell::Num(x)) if x.fract() == 0.0 => Some(x.abs() as u64),
                Some(Cell::Text(t)) => t
                    .parse::<i64>()
                    .ok()
                    .filter(|x| !is_yyyymmdd(*x))
                    .map(i64::unsigned_abs),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        epoch_unit(most)
    });
    // Per symbol: (bar time, open, high, low, close, volume).
    type Rows = Vec<(Option<i64>, [f64; 5])>;
    let mut by: BTreeMap<String, Rows> = BTreeMap::new();
    for (line, cells) in &table.rows {
        if problems.len() >= MAX_PROBLEMS {
            problems.push(format!("... (stopped at {MAX_PROBLEMS} problems)"));
            break;
        }
        if cells.len() != table.columns.len() {
            problems.push(format!(
                "line {line}: {} fields, the header has {}",
                cells.len(),
                table.columns.len()
            ));
            continue;
        }
        let mut r = [0.0; 5];
        let mut ok = true;
        for (k, x) in r.iter_mut().enumerate() {
            let i = price[k];
            match number(&cells[i]) {
                Some(v) if v.is_finite() && (v > 0.0 || (k == 4 && v >= 0.0)) => *x = v,
                _ => {
                    ok = false;
                    problems.push(format!(
                        "line {line}: {} {:?} is not a {} number",
                        table.columns[i],
                        show(&cells[i]),
                        if k == 4 { "non-negative" } else { "positive" }
                    ));
                }
            }
        }
        let t = match (time_col, unit) {
            (Some(i), Some(unit)) => {
                let t = match clock_col {
                    Some(c) => parse_time(&format!("{} {}", show(&cells[i]), show(&cells[c]))),
                    None => time_ms(&cells[i], unit),
                };
                match t {
                    Some(t) if t >= 0 => Some(t),
                    Some(_) => {
                        ok = false;
                        problems.push(format!("line {line}: time {:?} is before 1970", show(&cells[i])));
                        None
                    }
                    None => {
                        ok = false;
                        problems.push(format!(
                            "line {line}: time {:?} is not a date or time this reads",
                            show(&cells[i])
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        let sym = match sym_col {
            Some(i) => match &cells[i] {
                Cell::Text(s) if !s.trim().is_empty() => s.trim().to_string(),
                Cell::Int(x) => x.to_string(),
                c => {
                    problems.push(format!("line {line}: symbol {:?} is empty", show(c)));
                    continue;
                }
            },
            None => default_symbol.to_string(),
        };
        if sym.len() > augur_service::codec::MAX_SYMBOL || !augur_service::codec::is_subject_token(&sym) {
            problems.push(format!(
                "line {line}: symbol {:?} is not a subject token of at most {} bytes (no '.', '*', '>', space)",
                sym.chars().take(80).collect::<String>(),
                augur_service::codec::MAX_SYMBOL
            ));
            continue;
        }
        if ok && problems.is_empty() {
            by.entry(sym).or_default().push((t, r));
        }
    }
    if by.is_empty() && problems.is_empty() {
        problems.push("no bars".into());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut out = Vec::new();
    for (symbol, mut rows) in by {
        if time_col.is_some() {
            rows.sort_by_key(|(t, _)| *t);
            if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
                problems.push(format!(
                    "{symbol}: two bars at the same time ({} ms)",
                    w[0].0.unwrap_or_default()
                ));
                continue;
            }
        }
        out.push(Bars {
            symbol,
            times_ms: time_col.map(|_| rows.iter().map(|(t, _)| t.unwrap_or_default()).collect()),
            rows: rows.into_iter().map(|(_, r)| r).collect(),
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn show(c: &Cell) -> String {
    match c {
        Cell::Text(s) => s.chars().take(40).collect(),
        Cell::Num(x) => x.to_string(),
        Cell::Int(x) | Cell::TimeMs(x) => x.to_string(),
        Cell::Null => "null".into(),
    }
}

fn number(c: &Cell) -> Option<f64> {
    match c {
        Cell::Num(x) => Some(*x),
        Cell::Int(x) => Some(*x as f64),
        Cell::Text(s) => s.parse().ok(),
        Cell::TimeMs(_) | Cell::Null => None,
    }
}

/// The unit of a column of epoch numbers, from its largest magnitude: ms per unit, or a
/// divisor (negative) for us and ns.
fn epoch_unit(most: u64) -> i64 {
    if most < 100_000_000_000 {
        1000
    } else if most < 100_000_000_000_000 {
        1
    } else if most < 100_000_000_000_000_000 {
        -1000
    } else {
        -1_000_000
    }
}

fn epoch_ms(x: i64, unit: i64) -> Option<i64> {
    if unit > 0 {
        x.checked_mul(unit)
    } else {
        Some(x.div_euclid(-unit))
    }
}

/// `YYYYMMDD` as an integer, a real date of 1900-2199.
fn is_yyyymmdd(x: i64) -> bool {
    (19_000_101..=21_991_231).contains(&x)
        && augur_service::service::civil_days(x / 10_000, x / 100 % 100, x % 100).is_some()
}

fn time_ms(c: &Cell, unit: i64) -> Option<i64> {
    match c {
        Cell::TimeMs(t) => Some(*t),
        Cell::Int(x) if is_yyyymmdd(*x) => parse_time(&x.to_string()),
        Cell::Int(x) => epoch_ms(*x, unit),
        Cell::Num(x) if x.fract() == 0.0 && x.abs() < 9e18 => time_ms(&Cell::Int(*x as i64), unit),
        Cell::Text(s) => match s.trim().parse::<i64>() {
            Ok(x) => time_ms(&Cell::Int(x), unit),
            Err(_) => parse_time(s.trim()),
        },
        _ => None,
    }
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.fff]]][Z|±HH[:MM]]`, `DD.MM.YYYY[ HH:MM[:SS[.fff]]]`,
/// `YYYYMMDD`, or an epoch number (its unit told by its size); Unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty()
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'))
    {
        let x: i64 = s.parse().ok()?;
        if is_yyyymmdd(x) {
            return Some(
                augur_service::service::civil_days(x / 10_000, x / 100 % 100, x % 100)? * 86_400_000,
            );
        }
        return epoch_ms(x, epoch_unit(x.unsigned_abs()));
    }
    let (date, clock) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], Some(s[i + 1..].trim())),
        None => (s, None),
    };
    let num = |x: &str| -> Option<i64> {
        (!x.is_empty() && x.len() <= 9 && x.bytes().all(|b| b.is_ascii_digit())).then(|| x.parse().ok())?
    };
    let parts: Vec<&str> = date.split(['-', '.', '/']).collect();
    if parts.len() != 3 {
        return None;
    }
    let (y, m, d) = if parts[0].len() == 4 {
        (num(parts[0])?, num(parts[1])?, num(parts[2])?)
    } else if parts[2].len() == 4 && date.contains('.') {
        (num(parts[2])?, num(parts[1])?, num(parts[0])?)
    } else {
        return None;
    };
    let day = augur_service::service::civil_days(y, m, d)?;
    let mut ms = 0i64;
    if let Some(c) = clock.filter(|c| !c.is_empty()) {
        // A zone: Z, or an offset from UTC (what pandas writes for an aware time).
        let (c, offset_ms) = if let Some(c) = c.strip_suffix('Z') {
            (c, 0)
        } else if let Some(i) = c.rfind(['+', '-']) {
            let (sign, z) = (if &c[i..=i] == "-" { -1 } else { 1 }, c[i + 1..].replace(':', ""));
            let (h, mi) = match z.len() {
                2 => (num(&z)?, 0),
                4 => (num(&z[..2])?, num(&z[2..])?),
                _ => return None,
            };
            if h > 14 || mi > 59 {
                return None;
            }
            (&c[..i], sign * (h * 60 + mi) * 60_000)
        } else {
            (c, 0)
        };
        let (hms, frac) = match c.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (c, None),
        };
        let f: Vec<&str> = hms.split(':').collect();
        if !(2..=3).contains(&f.len()) {
            return None;
        }
        let (h, mi) = (num(f[0])?, num(f[1])?);
        let sec = if f.len() == 3 { num(f[2])? } else { 0 };
        if h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        ms = ((h * 60 + mi) * 60 + sec) * 1000 - offset_ms;
        if let Some(fr) = frac {
            let digits = fr.get(..fr.len().min(3))?;
            if fr.is_empty() || !fr.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            ms += num(digits)? * 10i64.pow(3 - digits.len() as u32);
        }
    }
    Some(day * 86_400_000 + ms)
}

/// The length of a bar of `timeframe` (`<n>s`, `m`, `h`, `d` or `w`), ms.
pub fn timeframe_ms(timeframe: &str) -> Option<i64> {
    let unit = match timeframe.chars().last()? {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    let n = &timeframe[..timeframe.len() - 1];
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    n.checked_mul(unit)
}

/// What may be wrong with bars that read well: a symbol too short to warm the features up,
/// bars spaced unlike `timeframe` (median spacing off by more than half).
pub fn warnings(bars: &[Bars], timeframe: &str) -> Vec<String> {
    let mut out = Vec::new();
    let step = timeframe_ms(timeframe);
    for b in bars {
        if b.rows.len() < crate::features::WARMUP_BARS {
            out.push(format!(
                "{}: {} bars, fewer than the {} ta-v1 needs before its first vector: nothing to predict",
                b.symbol,
                b.rows.len(),
                crate::features::WARMUP_BARS
            ));
        }
        if let (Some(t), Some(step)) = (&b.times_ms, step) {
            let mut gaps: Vec<i64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.sort_unstable();
            if let Some(&median) = gaps.get(gaps.len() / 2)
                && (median * 2 < step || median > step + step / 2)
            {
                out.push(format!(
                    "{}: the bars are {} s apart (median), and --timeframe {timeframe} is {} s: the models of that timeframe score bars of another",
                    b.symbol,
                    median / 1000,
                    step / 1000
                ));
            }
        }
    }
    out
}

/// The ta-v1 vectors of every symbol's bars, stamped with each bar's close time, as the
/// length-delimited `FeatureVectorBatch` stream `augur replay` reads (one vector a message,
/// symbol after symbol).
pub fn feature_stream(bars: &[Bars], timeframe: &str) -> anyhow::Result<Vec<u8>> {
    let step = timeframe_ms(timeframe)
        .with_context(|| format!("timeframe {timeframe:?}: expected <n>s, <n>m, <n>h, <n>d or <n>w"))?;
    let mut out = Vec::new();
    for b in bars {
        let s = Series {
            symbol: b.symbol.clone(),
            timeframe: timeframe.to_string(),
            rows: b.rows.clone(),
        };
        for mut v in vectors(&s, &b.symbol, timeframe) {
            if let Some(t) = &b.times_ms {
                let i = usize::try_from(v.sequence.saturating_sub(1)).unwrap_or(usize::MAX);
                v.event_time_ms = t.get(i).and_then(|t| t.checked_add(step)).unwrap_or(0);
            }
            let batch = pb::FeatureVectorBatch { vectors: vec![v] };
            batch
                .encode_length_delimited(&mut out)
                .context("encoding a feature vector")?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_formats_a_desk_has() {
        assert_eq!(parse_time("2000-03-01"), Some(951_868_800_000));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(parse_time("01.01.2017 22:00:00.000"), Some(1_483_308_000_000));
        assert_eq!(parse_time("2017-01-01 22:00:00.5"), Some(1_483_308_000_500));
        assert_eq!(parse_time("1483308000"), Some(1_483_308_000_000));
        assert_eq!(parse_time("1483308000000"), Some(1_483_308_000_000));
        assert_eq!(parse_time("1483308000000000000"), Some(1_483_308_000_000));
        for bad in [
            "",
            "2000-02-30",
            "2000-13-01",
            "01/02/2000",
            "2000-01-01 25:00",
            "x",
            "2000-01-01 10:00:00.x",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(timeframe_ms("1d"), Some(86_400_000));
        assert_eq!(timeframe_ms("15m"), Some(900_000));
        assert_eq!(timeframe_ms("0h"), None);
        assert_eq!(timeframe_ms("d"), None);
        assert_eq!(timeframe_ms("1y"), None);
        assert_eq!(timeframe_ms("1\u{e9}"), None);
        assert_eq!(timeframe_ms("+1d"), None);
        // YYYYMMDD is a date, not seconds of 1970; zones are applied.
        assert_eq!(parse_time("20000301"), Some(951_868_800_000));
        assert_eq!(parse_time("2000-03-01 00:00:00+00:00"), Some(951_868_800_000));
        assert_eq!(parse_time("2000-03-01T02:30:00+02:30"), Some(951_868_800_000));
        assert_eq!(parse_time("2000-02-29 19:00:00-05:00"), Some(951_868_800_000));
        assert_eq!(parse_time("2000-03-01 10:15:60"), None);
    }

    #[test]
    fn every_problem_of_a_file_is_listed_with_its_line() {
        let t = read_csv(
            "Date,Open,High,Low,Close,Volume\n2000-01-03,1,2,0.5,1.5,100\n2000-01-04,1,x,0.5,1.5,100\n2000-02-30,1,2,0.5,1.5,100\n2000-01-05,1,2,0.5,-1,100\n2000-01-06,1,2\n",
        );
        let p = bars(&t, "A").unwrap_err();
        let all = p.join("\n");
        assert_eq!(p.len(), 4, "{all}");
        for want in [
            "line 3: High \"x\"",
            "line 4: time \"2000-02-30\"",
            "line 5: Close \"-1\"",
            "line 6: 3 fields",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        let p = bars(&read_csv("time,open,high,low,close\n"), "A").unwrap_err();
        assert!(p[0].contains("no \"volume\" column"), "{p:?}");
    }

    #[test]
    fn symbols_are_split_and_each_sorted_by_time() {
        let t = read_csv(
            "symbol,time,open,high,low,close,volume\nB,2000-01-04,2,2,2,2,0\nA,2000-01-04,1,1,1,1,1\n\"B\",2000-01-03,3,3,3,3,3\n",
        );
        let b = bars(&t, "X").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].symbol.as_str(), b[0].rows.len()), ("A", 1));
        assert_eq!(b[1].symbol, "B");
        assert_eq!(b[1].rows[0][0], 3.0);
        assert_eq!(b[1].times_ms.as_ref().map(|t| t[0]), Some(946_857_600_000));
        let dup = read_csv("time,open,high,low,close,volume\n2000-01-03,1,1,1,1,1\n2000-01-03,1,1,1,1,1\n");
        assert!(bars(&dup, "A").unwrap_err()[0].contains("same time"));
    }

    #[test]
    fn epochs_take_one_unit_per_column_and_times_before_1970_are_refused() {
        // Milliseconds of 1971 (small enough to pass for seconds alone) beside 2000's.
        let t = read_csv("time,open,high,low,close,volume\n31536000000,1,1,1,1,1\n946684800000,1,1,1,1,1\n");
        let b = bars(&t, "A").unwrap();
        assert_eq!(b[0].times_ms, Some(vec![31_536_000_000, 946_684_800_000]));
        let old = read_csv("date,open,high,low,close,volume\n1969-12-31,1,1,1,1,1\n");
        assert!(bars(&old, "A").unwrap_err()[0].contains("before 1970"));
    }

    #[test]
    fn intraday_date_and_time_columns_are_one_time_and_symbols_must_be_tokens() {
        let t = read_csv(
            "Date,Time,Open,High,Low,Close,Volume\n2000-01-03,10:00,1,1,1,1,1\n2000-01-03,11:00,1,1,1,1,1\n",
        );
        let b = bars(&t, "A").unwrap();
        assert_eq!(b[0].times_ms.as_ref().map(|t| t[1] - t[0]), Some(3_600_000));
        let t = read_csv("symbol,open,high,low,close,volume\nBRK.B,1,1,1,1,1\n");
        assert!(bars(&t, "A").unwrap_err()[0].contains("not a subject token"));
        // A ragged file stops at 20 problems.
        let mut text = String::from("open,high,low,close,volume\n");
        for _ in 0..100 {
            text.push_str("1,1,1,1,1,\n");
        }
        assert_eq!(bars(&read_csv(&text), "A").unwrap_err().len(), MAX_PROBLEMS + 1);
    }

    #[test]
    fn the_symbol_of_a_file_keeps_its_dots_and_every_gzip_member_is_read() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("BRK-B.v2.csv.gz");
        let mut bytes = Vec::new();
        for part in ["open,high,low,close,volume\n1,1,1,1,1\n", "2,2,2,2,2\n"] {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(part.as_bytes()).unwrap();
            bytes.extend(z.finish().unwrap());
        }
        std::fs::write(&p, bytes).unwrap();
        let err = read(&p, None).unwrap_err().to_string();
        assert!(
            err.contains("symbol \"BRK-B.v2\" is not a subject token"),
            "{err}"
        );
        let b = read(&p, Some("BRK-B")).unwrap();
        assert_eq!(b[0].rows.len(), 2);
        // A footer that is not Parquet: an error, not a crash.
        let q = dir.path().join("x.parquet");
        std::fs::write(&q, b"PAR1 not really PAR1").unwrap();
        assert!(read(&q, None).is_err());
    }

    #[test]
    fn warnings_name_short_symbols_and_a_timeframe_unlike_the_bars() {
        let b = Bars {
            symbol: "A".into(),
            times_ms: Some((0..10).map(|i| i * 86_400_000).collect()),
            rows: vec![[1.0; 5]; 10],
        };
        let w = warnings(std::slice::from_ref(&b), "1h");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("fewer than the 50"), "{w:?}");
        assert!(w[1].contains("86400 s apart"), "{w:?}");
        assert_eq!(warnings(&[b], "1d").len(), 1);
    }
}
