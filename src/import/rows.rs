//! From rows of text to validated facility rows: header matching and per-row checks.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{GeoPoint, facility_code};
use crate::import::read::{Format, MAX_COLUMNS, Sheet};

/// Row errors kept in a report; `failed` still counts every failed row.
pub const MAX_REPORTED_ERRORS: usize = 1000;

/// A row that passed every check, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct FacilityRow {
    pub row: u32,
    pub code: String,
    pub name: String,
    /// `None` when the file gives none: `health_center` for a new facility, what is stored for
    /// one updated. The same holds for the address and the phone.
    pub facility_type: Option<String>,
    pub council_id: Uuid,
    pub point: GeoPoint,
    pub address: Option<String>,
    pub contact_phone: Option<String>,
}

/// One problem with one row (and column, when it is one cell's fault).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct RowError {
    /// The row's number in the spreadsheet, blank rows counted: the header's row is the first
    /// that is not blank (row 1 in most files).
    pub row: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub column: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Column {
    Name,
    Code,
    Type,
    Latitude,
    Longitude,
    CouncilName,
    CouncilCode,
    Address,
    ContactPhone,
}

impl Column {
    /// The column a header names, and whether it names it only as a fallback (read when no
    /// header names it otherwise, and never counted as the column given twice).
    fn from_header(header: &str) -> Option<(Self, bool)> {
        // Any run of spaces (a non-breaking one pasted from the web too), `_` and `-` is one `_`.
        // Characters that show nothing (a BOM, a zero-width space pasted from the web) are not
        // part of the name the user sees.
        let lower = header
            .chars()
            .filter(|&c| !crate::domain::is_invisible(c))
            .collect::<String>()
            .trim()
            .to_lowercase();
        let normal = lower
            .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
            .filter(|word| !word.is_empty())
            .collect::<Vec<_>>()
            .join("_");
        if matches!(normal.as_str(), "phone_number" | "telephone") {
            return Some((Column::ContactPhone, true));
        }
        Some((
            match normal.as_str() {
                "name" | "facility_name" => Column::Name,
                "code" | "facility_code" => Column::Code,
                "type" | "facility_type" => Column::Type,
                "latitude" | "lat" => Column::Latitude,
                "longitude" | "lng" | "lon" | "long" => Column::Longitude,
                "council_name" | "council" | "district" => Column::CouncilName,
                "council_code" | "district_code" => Column::CouncilCode,
                "address" => Column::Address,
                "contact_phone" | "phone" => Column::ContactPhone,
                _ => return None,
            },
            false,
        ))
    }

    fn name(self) -> &'static str {
        match self {
            Column::Name => "name",
            Column::Code => "code",
            Column::Type => "type",
            Column::Latitude => "latitude",
            Column::Longitude => "longitude",
            Column::CouncilName => "council_name",
            Column::CouncilCode => "council_code",
            Column::Address => "address",
            Column::ContactPhone => "contact_phone",
        }
    }
}

/// Councils by lower-cased name and code.
pub type Councils = HashMap<String, Uuid>;

#[derive(Debug)]
pub struct Checked {
    pub valid: Vec<FacilityRow>,
    pub errors: Vec<RowError>,
    pub failed: usize,
    pub total_rows: usize,
}

/// Maps headers to columns, or says what is wrong with them: a required column missing, or one
/// column given twice (under the same name or two that mean it, as `phone` and
/// `contact_phone`), which would leave the file's author guessing which one was read.
fn columns(headers: &[String]) -> Result<HashMap<Column, usize>, Vec<String>> {
    let mut map = HashMap::new();
    let mut fallbacks = HashMap::new();
    let mut problems = Vec::new();
    for (i, header) in headers.iter().enumerate() {
        if let Some((column, fallback)) = Column::from_header(header) {
            if fallback {
                fallbacks.entry(column).or_insert(i);
            } else if let Some(&first) = map.get(&column) {
                problems.push(format!(
                    "column `{}` is given twice (columns {} and {}); keep one",
                    column.name(),
                    column_letters(first),
                    column_letters(i)
                ));
            } else {
                map.insert(column, i);
            }
        }
    }
    for (column, i) in fallbacks {
        map.entry(column).or_insert(i);
    }
    let mut missing = Vec::new();
    for required in [
        Column::Name,
        Column::Code,
        Column::Latitude,
        Column::Longitude,
    ] {
        if !map.contains_key(&required) {
            missing.push(required.name());
        }
    }
    if !map.contains_key(&Column::CouncilName) && !map.contains_key(&Column::CouncilCode) {
        missing.push("council_name");
    }
    problems.extend(
        missing
            .into_iter()
            .map(|c| format!("missing required column `{c}`")),
    );
    if problems.is_empty() {
        Ok(map)
    } else {
        Err(problems)
    }
}

/// A column's letters as a spreadsheet shows them (0 → `A`, 26 → `AA`).
fn column_letters(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        letters.push(b'A' + ((n - 1) % 26) as u8);
        n = (n - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ASCII letters")
}

/// What Excel shows in a cell whose formula failed, and writes as that text to CSV, in
/// English (an XLSX file stores them so, whatever the language): `#N/A`, `#VALUE!`, `#SPILL!`.
/// A CSV saved by Excel in another language has them in that language: `#NOM?`, `#VALEUR!`
/// (French), `#WERT!`, `#NV` (German), `#¡VALOR!` (Spanish), `#N/D` (Italian, Portuguese); so a
/// cell of `#`, capitals (`¡`, `¿`, `/`, digits and `_` among them) and a closing `!` or `?`
/// is taken for one too. No code or name is written so.
fn excel_error(text: &str) -> bool {
    // "Not available" has no closing mark: `#N/A`, `#N/B` (Dutch), `#Н/Д` (Russian)…
    const NOT_AVAILABLE: &[&str] = &[
        "#NV",
        "#NA",
        "#GETTING_DATA",
        "#NENÍ_K_DISPOZICI",
        "#HIÁNYZIK",
    ];
    if NOT_AVAILABLE.contains(&text)
        || text.strip_prefix('#').is_some_and(|inner| {
            inner.split_once('/').is_some_and(|(a, b)| {
                [a, b].iter().all(|part| {
                    (1..=3).contains(&part.chars().count()) && part.chars().all(char::is_uppercase)
                })
            })
        })
    {
        return true;
    }
    let Some(inner) = text
        .strip_prefix('#')
        .and_then(|t| t.strip_suffix(['!', '?']))
    else {
        return false;
    };
    inner.chars().count() <= 24
        && inner.chars().any(char::is_uppercase)
        && inner
            .chars()
            .all(|c| c.is_uppercase() || c.is_ascii_digit() || matches!(c, '/' | '_' | '¡' | '¿'))
}

/// A cell's text as a message quotes it: control characters escaped (a NUL could not be
/// stored in the report), at most 64 characters.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(64) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

/// A code as the unique index on `lower(code)` compares it: each character lower-cased on its
/// own, as Postgres does. `str::to_lowercase` differs: it lowers a word-final `Σ` to `ς` and
/// `İ` to two characters.
pub fn code_key(code: &str) -> String {
    code.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// A council's name or code as a cell is matched to it: spelled as a facility code is (invisible
/// characters dropped, spaces collapsed), and compared as [`code_key`] lower-cases it.
pub fn council_key(text: &str) -> String {
    code_key(&facility_code(text))
}

/// A number Excel shortened to its scientific form when it wrote the CSV (`1.23457E+11` for a
/// twelve-digit code, `1,23457E+11` where the decimal mark is a comma): the digits it dropped
/// are lost. (A code is a whole number: Excel writes `E+` for those, so `1E-05` may be a code of
/// its own.)
fn excel_shortened(code: &str) -> bool {
    let Some((mantissa, exponent)) = code.split_once(['E', 'e']) else {
        return false;
    };
    let (whole, fraction) = mantissa.split_once(['.', ',']).unwrap_or((mantissa, "0"));
    let exponent = exponent.strip_prefix('+').unwrap_or("");
    whole.len() == 1
        && [whole, fraction, exponent]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// Numbers as Excel users type them: `-1.9456`, `-1,9456` (decimal comma), ` 30.1 `.
fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    let t = if t.contains(',') && !t.contains('.') {
        t.replace(',', ".")
    } else {
        t.to_string()
    };
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Notes a row's code: its first row, and whether that row was valid, or, for a code seen
/// before, the row that repeats it (the first such).
fn note_code(
    seen: &mut HashMap<String, (u32, bool)>,
    repeated: &mut HashMap<String, u32>,
    key: String,
    row: u32,
    valid: bool,
) {
    match seen.entry(key) {
        std::collections::hash_map::Entry::Occupied(first) => {
            repeated.entry(first.key().clone()).or_insert(row);
        }
        std::collections::hash_map::Entry::Vacant(first) => {
            first.insert((row, valid));
        }
    }
}

pub fn check(sheet: &Sheet, councils: &Councils) -> Result<Checked, Vec<String>> {
    let map = columns(&sheet.headers).map_err(|mut problems| {
        if problems.iter().any(|p| p.starts_with("missing")) {
            // A title above the table is read as its header: say which row was.
            let read: Vec<String> = sheet
                .headers
                .iter()
                .filter(|h| !h.trim().is_empty())
                .take(8)
                .map(|h| format!("`{}`", shown(h.trim()).chars().take(40).collect::<String>()))
                .collect();
            problems.push(format!(
                "the header is the first row with a value, row {}: {}",
                sheet.header_row,
                read.join(", ")
            ));
            if sheet.header_cut {
                problems.push(format!(
                    "only the first {MAX_COLUMNS} columns (A to BL) are read, and the header goes \
                     on past them: move the columns needed to the left"
                ));
            }
        }
        problems
    })?;
    let mut valid = Vec::with_capacity(sheet.rows.len());
    let mut errors = Vec::new();
    let mut failed = 0;
    // Each code's first row, and whether that row was valid.
    let mut seen_codes: HashMap<String, (u32, bool)> = HashMap::new();
    // Each repeated code's second row, by its key.
    let mut repeated: HashMap<String, u32> = HashMap::new();

    for (i, (row, cells)) in sheet.rows.iter().enumerate() {
        // Only the first errors are reported (`failed` counts every row): a file of 200,000
        // broken rows holds no more of them than that.
        errors.truncate(MAX_REPORTED_ERRORS);
        let row = *row;
        let get = |c: Column| -> &str {
            map.get(&c)
                .and_then(|&i| cells.get(i))
                .map_or("", |s| s.trim())
        };
        let code = facility_code(get(Column::Code));
        let key = code_key(&code);
        // A CSV row with values past the header line's last field: most likely a separator
        // inside a value that is not in quotes (`KG 11 Ave, Kimironko`), which has shifted
        // every value after it into the wrong column. A column with a blank header (notes, say,
        // in a sheet Excel padded every line of) is a field of the header line, and a value in
        // it no shift, unless the row has more fields than the header line: then the value is
        // one shifted there (a file whose lines all end in a separator). A spreadsheet's cells
        // cannot shift, so a note to the right of an XLSX table is left alone.
        let named = sheet.headers.len();
        let shifted_past = match sheet.widths.get(i) {
            Some(&width) if width > sheet.header_width => named,
            _ => sheet.header_width,
        };
        if sheet.format == Format::Csv
            && cells
                .iter()
                .skip(shifted_past)
                .any(|c| !c.trim().is_empty())
        {
            errors.push(RowError {
                row,
                column: None,
                message: format!(
                    "has values past the last of the {named} named columns of the header: is a \
                     separator inside a value that is not in quotes? Quote that value"
                ),
            });
            if !code.is_empty() {
                note_code(&mut seen_codes, &mut repeated, key, row, false);
            }
            failed += 1;
            continue;
        }
        let mut broken: Vec<(usize, Column)> = map
            .iter()
            .filter(|(c, _)| excel_error(get(**c)))
            .map(|(c, i)| (*i, *c))
            .collect();
        if !broken.is_empty() {
            broken.sort_unstable_by_key(|(i, _)| *i);
            errors.extend(broken.into_iter().map(|(_, column)| RowError {
                row,
                column: Some(column.name().to_string()),
                message: format!(
                    "shows Excel's error `{}`: the formula behind it failed; put the value itself in the cell",
                    get(column)
                ),
            }));
            if !code.is_empty() && !excel_error(&code) {
                note_code(&mut seen_codes, &mut repeated, key, row, false);
            }
            failed += 1;
            continue;
        }
        let mut row_errors = Vec::new();
        let mut err = |column: Column, message: String| {
            row_errors.push(RowError {
                row,
                column: Some(column.name().to_string()),
                message,
            });
        };

        if code.is_empty() {
            err(Column::Code, "is required".into());
        } else if code.chars().count() > 64 {
            err(Column::Code, "must be at most 64 characters".into());
        } else if excel_shortened(&code) {
            err(
                Column::Code,
                format!(
                    "`{}` is a number Excel shortened when it saved the file, its last digits \
                     lost: format the column as Text, type the codes again and save again",
                    shown(&code)
                ),
            );
        } else if let Some(&(first, valid)) = seen_codes.get(&key) {
            let refused = if valid {
                ", refused as well: keep the right one of the rows"
            } else {
                ", itself refused: correct that row, or remove one of the two"
            };
            err(
                Column::Code,
                format!(
                    "`{}` is repeated in the file (first at row {first}{refused})",
                    shown(&code)
                ),
            );
        }
        let name = get(Column::Name).to_string();
        if name.chars().all(crate::domain::shows_nothing) {
            err(Column::Name, "is required".into());
        } else if name.chars().count() > 200 {
            err(Column::Name, "must be at most 200 characters".into());
        }
        let latitude = parse_number(get(Column::Latitude));
        let longitude = parse_number(get(Column::Longitude));
        match latitude {
            None if get(Column::Latitude).is_empty() => err(Column::Latitude, "is required".into()),
            None => err(
                Column::Latitude,
                format!("`{}` is not a number", shown(get(Column::Latitude))),
            ),
            Some(lat) if !(-90.0..=90.0).contains(&lat) => {
                err(Column::Latitude, "must be between -90 and 90".into())
            }
            _ => {}
        }
        match longitude {
            None if get(Column::Longitude).is_empty() => {
                err(Column::Longitude, "is required".into())
            }
            None => err(
                Column::Longitude,
                format!("`{}` is not a number", shown(get(Column::Longitude))),
            ),
            Some(lng) if !(-180.0..=180.0).contains(&lng) => {
                err(Column::Longitude, "must be between -180 and 180".into())
            }
            _ => {}
        }
        if latitude == Some(0.0) && longitude == Some(0.0) {
            // No facility stands at 0° 0°, in the Gulf of Guinea: the zeros of a lookup formula
            // that found nothing, most likely.
            err(
                Column::Latitude,
                "0, 0 is in the sea, no facility's place: give the facility's own coordinates"
                    .into(),
            );
        }
        // The council by its name or its code, whichever cell names one; a row giving both is
        // read by either (a name spelled otherwise beside a known code), unless the two name
        // different councils; a cell naming none is the one reported.
        let given: Vec<(Column, &str, Option<Uuid>)> = [Column::CouncilName, Column::CouncilCode]
            .into_iter()
            .map(|c| (c, get(c)))
            .filter(|(_, v)| !v.is_empty())
            .map(|(c, v)| (c, v, councils.get(&council_key(v)).copied()))
            .collect();
        let found: Vec<&(Column, &str, Option<Uuid>)> =
            given.iter().filter(|(_, _, id)| id.is_some()).collect();
        let council_id = found.first().and_then(|(_, _, id)| *id);
        match (given.first(), found.as_slice()) {
            // Under the column the file has (it has one of the two).
            (None, _) if !map.contains_key(&Column::CouncilName) => {
                err(Column::CouncilCode, "is required".into());
            }
            (None, _) => err(Column::CouncilName, "is required".into()),
            (Some(&(column, key, _)), []) => {
                err(column, format!("no council named `{}`", shown(key)));
            }
            (_, [(_, name, Some(by_name)), (column, code, Some(by_code))])
                if by_name != by_code =>
            {
                err(
                    *column,
                    format!(
                        "`{}` names another council than `{}` in {}",
                        shown(code),
                        shown(name),
                        Column::CouncilName.name()
                    ),
                );
            }
            _ => {}
        }
        // Whether the workbook marked this row's cell in `column` (as a date, say).
        let marked = |cells: &HashSet<(u32, usize)>, column: Column| {
            map.get(&column).is_some_and(|&i| cells.contains(&(row, i)))
        };
        // A code typed as `1-12` that Excel took for a date holds a day count (`45658`).
        for column in [
            Column::Code,
            Column::Name,
            Column::Type,
            Column::ContactPhone,
            Column::CouncilName,
            Column::CouncilCode,
        ] {
            if marked(&sheet.dates, column) {
                err(
                    column,
                    "is a date to Excel, which keeps it as a day count, not as typed: format the \
                     column as Text and type the value again"
                        .into(),
                );
            }
        }
        // A code stored as a number and shown through a format that adds text: Excel shows
        // `HC-012`, and writes it so in a CSV, but the cell holds `12`. A phone so shown keeps
        // its digits (`"+"000 000 000 000`), unless the format shows zeros the number lacks:
        // `0000 000 000` shows the cell's `788123456` as `0788 123 456`.
        for (column, cells) in [
            (Column::Code, &sheet.dressed),
            (Column::CouncilCode, &sheet.dressed),
            (Column::ContactPhone, &sheet.hiding_zeros),
        ] {
            if marked(cells, column) {
                err(
                    column,
                    format!(
                        "holds the number `{}`, which Excel shows through a format that adds \
                         text: format the column as Text and type the values as shown",
                        shown(get(column))
                    ),
                );
            }
        }
        // The end of an address whose separator is not in quotes (`KG 11 Ave, Kimironko`),
        // carried into an empty phone column just after it and last on the line, where it
        // shifts nothing past the header: a CSV phone with no digit that begins with the space
        // the address had after its comma. (`N/A` or `none`, as typed, is a phone kept as it is.)
        let carried = match (map.get(&Column::Address), map.get(&Column::ContactPhone)) {
            (Some(&address), Some(&phone)) if sheet.format == Format::Csv => {
                let raw = cells.get(phone).map_or("", String::as_str);
                phone == address + 1
                    && phone + 1 == sheet.headers.len()
                    && !get(Column::Address).is_empty()
                    && raw.starts_with(char::is_whitespace)
                    && !raw.trim().is_empty()
                    && !raw.chars().any(|c| c.is_ascii_digit())
            }
            _ => false,
        };
        if carried {
            err(
                Column::ContactPhone,
                format!(
                    "`{}` has no digit in it: is it the end of the address, after a comma that \
                     is not in quotes? Quote the address",
                    shown(get(Column::ContactPhone))
                ),
            );
        }
        // The facility endpoints' own limits, so that an imported facility can be edited.
        for column in [
            Column::Code,
            Column::Name,
            Column::Type,
            Column::ContactPhone,
        ] {
            let text = if column == Column::Code {
                &code
            } else {
                get(column)
            };
            if text.chars().any(char::is_control) {
                err(column, "must not contain control characters".into());
            }
        }
        // A cell Excel shows on several lines keeps its lines, joined by commas.
        let address = get(Column::Address)
            .split(['\n', '\r', '\t'])
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        if address.chars().any(char::is_control) {
            err(
                Column::Address,
                "must not contain control characters".into(),
            );
        }
        for (column, value, max) in [
            (Column::Type, get(Column::Type), 50),
            (Column::Address, address.as_str(), 500),
            (Column::ContactPhone, get(Column::ContactPhone), 32),
        ] {
            if value.chars().count() > max {
                err(column, format!("must be at most {max} characters"));
            }
        }
        let facility_type = match get(Column::Type) {
            "" => None,
            t => Some(crate::db::facilities::type_key(t)),
        };
        let optional = |c: Column| Some(get(c).to_string()).filter(|s| !s.is_empty());

        if !code.is_empty() {
            note_code(
                &mut seen_codes,
                &mut repeated,
                key,
                row,
                row_errors.is_empty(),
            );
        }
        if row_errors.is_empty() {
            let (Some(lat), Some(lng), Some(council_id)) = (latitude, longitude, council_id) else {
                unreachable!("each missing value recorded an error");
            };
            valid.push(FacilityRow {
                row,
                code,
                name,
                facility_type,
                council_id,
                point: GeoPoint::new(lat, lng).expect("checked above"),
                address: Some(address).filter(|a| !a.is_empty()),
                contact_phone: optional(Column::ContactPhone),
            });
        } else {
            failed += 1;
            errors.extend(row_errors);
        }
    }
    // Which of the rows of a repeated code is right is for the admin to say (the later one, a
    // correction typed below, as often as the first): none of them is applied.
    if !repeated.is_empty() {
        valid.retain(|r| match repeated.get(&code_key(&r.code)) {
            Some(again) => {
                errors.push(RowError {
                    row: r.row,
                    column: Some(Column::Code.name().to_string()),
                    message: format!(
                        "`{}` is repeated in the file (again at row {again}): keep the right \
                         one of the rows, and import again",
                        shown(&r.code)
                    ),
                });
                failed += 1;
                false
            }
            None => true,
        });
        errors.sort_by_key(|e| e.row);
    }
    errors.truncate(MAX_REPORTED_ERRORS);
    Ok(Checked {
        valid,
        errors,
        failed,
        total_rows: sheet.rows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::read::read;

    fn councils() -> (Councils, Uuid) {
        let id = Uuid::new_v4();
        let mut map = Councils::new();
        map.insert("gasabo".into(), id);
        map.insert("rw-0102".into(), id);
        (map, id)
    }

    #[test]
    fn headers_match_in_any_order_case_and_spacing_with_aliases() {
        let (councils, id) = councils();
        let sheet = read(b" Longitude ;LATITUDE;Council Code;Phone;Code;Name;Extra\n30.1;-1.9;RW-0102;+250;HC-1;Kimironko;x\n").unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.errors, vec![]);
        let row = &checked.valid[0];
        assert_eq!(
            (row.code.as_str(), row.council_id, row.point.latitude),
            ("HC-1", id, -1.9)
        );
        assert_eq!(row.contact_phone.as_deref(), Some("+250"));
        assert_eq!(row.facility_type, None);
        // Doubled and non-breaking spaces, as a header pasted from the web has them.
        let sheet = read(
            "Name;Code;Latitude;Longitude;Council\u{A0} Name;Phone  Number\nKimironko;HC-1;-1.9;30.1;Gasabo;+250\n"
                .as_bytes(),
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.errors, vec![]);
        assert_eq!(checked.valid[0].contact_phone.as_deref(), Some("+250"));
        // A second number under another name is left, as any extra column is.
        let sheet = read(
            b"Telephone;Name;Code;Latitude;Longitude;Council;Phone\n+1;Kimironko;HC-1;-1.9;30.1;Gasabo;+250\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.valid[0].contact_phone.as_deref(), Some("+250"));
    }

    #[test]
    fn required_columns_past_those_read_are_said_to_be() {
        let (councils, _) = councils();
        let filler = "x,".repeat(MAX_COLUMNS);
        let csv = format!(
            "{filler}name,code,latitude,longitude,council\n{filler}A,HC-1,-1.9,30.1,Gasabo\n"
        );
        let problems = check(&read(csv.as_bytes()).unwrap(), &councils).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("only the first 64 columns")),
            "{problems:?}"
        );
        // A note far to the right of a data row says nothing of the header.
        let csv = format!("name\nA,{filler}note\n");
        let problems = check(&read(csv.as_bytes()).unwrap(), &councils).unwrap_err();
        assert!(
            !problems.iter().any(|p| p.contains("only the first")),
            "{problems:?}"
        );
    }

    #[test]
    fn missing_required_columns_are_named() {
        let (councils, _) = councils();
        let sheet = read(b"name,latitude\nA,1\n").unwrap();
        let problems = check(&sheet, &councils).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "missing required column `code`",
                "missing required column `longitude`",
                "missing required column `council_name`",
                "the header is the first row with a value, row 1: `name`, `latitude`"
            ]
        );
    }

    #[test]
    fn a_council_is_found_by_its_name_or_its_code_unless_the_two_disagree() {
        let (councils, id) = councils();
        let sheet = read(
            b"code,name,latitude,longitude,council_name,council_code\n\
              A,Long name,-1.9,30.1,Gasabo District,RW-0102\n\
              B,Code only,-1.9,30.1,,RW-9999\n\
              C,Contradiction,-1.9,30.1,Gasabo,RW-0504\n\
              D,Both agree,-1.9,30.1,gasabo,rw-0102\n",
        )
        .unwrap();
        let mut councils = councils;
        councils.insert("rw-0504".into(), Uuid::new_v4());
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.valid.len(), 2);
        assert!(checked.valid.iter().all(|row| row.council_id == id));
        assert_eq!(
            places(&checked),
            vec![(3, Some("council_code")), (4, Some("council_code"))]
        );
        assert!(
            checked.errors[1]
                .message
                .contains("another council than `Gasabo`"),
            "{:?}",
            checked.errors
        );
    }

    #[test]
    fn a_council_cell_pasted_with_invisible_characters_or_doubled_spaces_is_found() {
        let id = Uuid::new_v4();
        let mut councils = Councils::new();
        councils.insert(council_key("Nyarugenge  Town"), id);
        councils.insert(council_key("RW-0102"), id);
        let sheet = read(
            "code,name,latitude,longitude,council_name,council_code\n\
             A,Pasted,-1.9,30.1,Nyarugenge\u{200B} town,\n\
             B,Spaced,-1.9,30.1,nyarugenge\u{A0}\u{A0}Town,\n\
             C,By code,-1.9,30.1,,\u{FEFF}rw-0102\n"
                .as_bytes(),
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.errors, vec![]);
        assert_eq!(checked.valid.len(), 3);
        assert!(checked.valid.iter().all(|row| row.council_id == id));
    }

    #[test]
    fn codes_excel_shortened_and_points_at_zero_zero_are_refused() {
        let (councils, _) = councils();
        let sheet = read(
            b"code,name,latitude,longitude,council_name\n\
              1.23457E+11,Shortened,-1.9,30.1,Gasabo\n\
              4E+05,Shortened too,-1.9,30.1,Gasabo\n\
              1E-05,Building 1 east wing,-1.9,30.1,Gasabo\n\
              HC-1E5,A code with an E,-1.9,30.1,Gasabo\n\
              HC-2,Lookup found nothing,0,0,Gasabo\n\
              HC-3,On the equator,0,30.1,Gasabo\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(
            places(&checked),
            vec![(2, Some("code")), (3, Some("code")), (6, Some("latitude"))]
        );
        assert!(
            checked.errors[0].message.contains("Excel shortened"),
            "{:?}",
            checked.errors
        );
        let kept: Vec<&str> = checked.valid.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(kept, ["1E-05", "HC-1E5", "HC-3"]);

        // Excel where the decimal mark is a comma writes its `;` file the same way.
        let sheet = read(
            b"code;name;latitude;longitude;council_name\n\
              1,23457E+11;Poste A;-1,95;30,1;Gasabo\n\
              HC-4;Poste B;-1,96;30,1;Gasabo\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(places(&checked), vec![(2, Some("code"))]);
        assert!(checked.errors[0].message.contains("Excel shortened"));
        assert_eq!(checked.valid.len(), 1);
    }

    #[test]
    fn excel_errors_are_known_in_the_languages_excel_writes_them_in() {
        for error in [
            "#N/A",
            "#VALUE!",
            "#DIV/0!",
            "#SPILL!",
            "#CALC!",
            "#GETTING_DATA",
            "#NOM?",
            "#VALEUR!",
            "#NOMBRE!",
            "#NUL!",
            "#WERT!",
            "#BEZUG!",
            "#NV",
            "#ÜBERLAUF!",
            "#N/B",
            "#Н/Д",
            "#HIÁNYZIK",
            "#¡VALOR!",
            "#¿NOMBRE?",
            "#N/D",
            "#NÚM!",
        ] {
            assert!(excel_error(error), "{error}");
        }
        for value in [
            "#1",
            "HC-1",
            "#",
            "#!",
            "#12!",
            "Kimironko #2!",
            "#hc-1!",
            "#N/A ",
            "#1/2",
            "#N/",
            "#KGL/HC/1",
        ] {
            assert!(!excel_error(value), "{value}");
        }
        // In a French CSV: the row is refused, not stored with `#NOM?` as its name.
        let (councils, _) = councils();
        let sheet = read(
            "name;code;latitude;longitude;council_name\n\
             #NOM?;HC-78;-1,95;30,11;Gasabo\n\
             CS Remera;#VALEUR!;-1,96;30,1;Gasabo\n"
                .as_bytes(),
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert!(checked.valid.is_empty());
        assert_eq!(places(&checked), vec![(2, Some("name")), (3, Some("code"))]);
    }

    #[test]
    fn a_code_stored_as_a_number_that_a_format_dresses_in_text_is_a_row_error() {
        let (councils, _) = councils();
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let sheet = workbook.add_worksheet();
        for (col, header) in ["code", "name", "latitude", "longitude", "council_code"]
            .iter()
            .enumerate()
        {
            sheet.write_string(0, col as u16, *header).unwrap();
        }
        // Excel's "Number" with red negatives, and a format adding text to negatives only,
        // show a positive code as it is.
        let formats = [
            r#""HC-"000"#,
            r"00\-000",
            "00000",
            "0.00",
            "General",
            r"0_ ;[Red]\-0\ ",
            r#"0;"minus "0"#,
            // Text Excel shows as it is, unescaped, or a space between digits: `00-020`,
            // `000 021`. A colour shows none, nor does a space after the number.
            "00-000",
            r"000\ 000",
            "[Blue]00000",
            r"0\ ",
            // Zeros alone in the first section, beside room kept or a section for negatives;
            // a currency symbol shows text.
            "00000;[Red]-00000",
            "00000_)",
            "[$RWF-487]00000",
        ];
        for (i, format) in formats.iter().enumerate() {
            let row = i as u32 + 1;
            let shown = rust_xlsxwriter::Format::new().set_num_format(*format);
            sheet
                .write_number_with_format(row, 0, 12.0 + f64::from(row), &shown)
                .unwrap();
            sheet.write_string(row, 1, "Facility").unwrap();
            sheet.write_number(row, 2, -1.9).unwrap();
            sheet.write_number(row, 3, 30.1).unwrap();
            sheet.write_string(row, 4, "RW-0102").unwrap();
        }
        let bytes = workbook.save_to_buffer().unwrap();
        let checked = check(&read(&bytes).unwrap(), &councils).unwrap();
        assert_eq!(
            places(&checked),
            vec![
                (2, Some("code")),
                (3, Some("code")),
                (9, Some("code")),
                (10, Some("code")),
                (15, Some("code"))
            ]
        );
        assert!(
            checked.errors[0].message.contains("holds the number `13`"),
            "{:?}",
            checked.errors
        );
        let kept: Vec<&str> = checked.valid.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(
            kept,
            [
                "00015", "16", "17", "18", "19", "00022", "23", "00024", "00025"
            ]
        );
    }

    #[test]
    fn a_phone_a_format_dresses_and_a_code_past_excels_fifteen_digits_are_row_errors() {
        let (councils, _) = councils();
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let sheet = workbook.add_worksheet();
        let headers = [
            "code",
            "name",
            "latitude",
            "longitude",
            "council_code",
            "phone",
        ];
        for (col, header) in headers.iter().enumerate() {
            sheet.write_string(0, col as u16, *header).unwrap();
        }
        for row in 1..=4u32 {
            sheet.write_string(row, 1, "Facility").unwrap();
            sheet.write_number(row, 2, -1.9).unwrap();
            sheet.write_number(row, 3, 30.1).unwrap();
            sheet.write_string(row, 4, "RW-0102").unwrap();
        }
        // Shown `0788 123 456`: the cell holds 788123456.
        sheet.write_string(1, 0, "A").unwrap();
        let spaced = rust_xlsxwriter::Format::new().set_num_format("0000 000 000");
        sheet
            .write_number_with_format(1, 5, 788_123_456.0, &spaced)
            .unwrap();
        // A code of 19 digits typed into a number cell: Excel kept the first 15.
        sheet
            .write_number(2, 0, 1_234_567_890_123_450_000.0)
            .unwrap();
        // Shown `0788123456`, which is what is read.
        sheet.write_string(3, 0, "C").unwrap();
        let zeros = rust_xlsxwriter::Format::new().set_num_format("0000000000");
        sheet
            .write_number_with_format(3, 5, 788_123_456.0, &zeros)
            .unwrap();
        // Shown `+250 788 123 456`: every digit is in the cell, which is what is read.
        sheet.write_string(4, 0, "D").unwrap();
        let dressed = rust_xlsxwriter::Format::new().set_num_format(r#""+"000 000 000 000"#);
        sheet
            .write_number_with_format(4, 5, 250_788_123_456.0, &dressed)
            .unwrap();
        let bytes = workbook.save_to_buffer().unwrap();
        let checked = check(&read(&bytes).unwrap(), &councils).unwrap();
        assert_eq!(
            places(&checked),
            vec![(2, Some("contact_phone")), (3, Some("code"))],
            "{:?}",
            checked.errors
        );
        assert!(
            checked.errors[1].message.contains("Excel shortened"),
            "{:?}",
            checked.errors
        );
        let kept: Vec<(&str, Option<&str>)> = checked
            .valid
            .iter()
            .map(|r| (r.code.as_str(), r.contact_phone.as_deref()))
            .collect();
        assert_eq!(
            kept,
            [("C", Some("0788123456")), ("D", Some("250788123456"))]
        );
    }

    #[test]
    fn a_csv_address_whose_separator_moved_it_into_an_empty_phone_column_is_a_row_error() {
        let (councils, _) = councils();
        let sheet = read(
            b"name,code,latitude,longitude,council_name,address,contact_phone\n\
              Clinic A,HC-1,-1.9,30.1,Gasabo,KG 11 Ave, Kimironko\n\
              Clinic B,HC-2,-1.9,30.1,Gasabo,\"KG 11 Ave, Kimironko\",+250 788 000 001\n\
              Clinic C,HC-3,-1.9,30.1,Gasabo,KG 9 Ave,N/A\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(places(&checked), vec![(2, Some("contact_phone"))]);
        assert_eq!(
            checked.errors[0].message,
            "`Kimironko` has no digit in it: is it the end of the address, after a comma that is \
             not in quotes? Quote the address"
        );
        let kept: Vec<(&str, Option<&str>)> = checked
            .valid
            .iter()
            .map(|r| (r.address.as_deref().unwrap(), r.contact_phone.as_deref()))
            .collect();
        assert_eq!(
            kept,
            [
                ("KG 11 Ave, Kimironko", Some("+250 788 000 001")),
                ("KG 9 Ave", Some("N/A"))
            ]
        );
    }

    #[test]
    fn a_header_with_a_character_that_shows_nothing_names_its_column() {
        let (councils, _) = councils();
        let sheet = read(
            "name,code\u{200B},latitude,longitude,council_name\nOk,A-1,-1.9,30.1,Gasabo\n"
                .as_bytes(),
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.valid.len(), 1, "{:?}", checked.errors);
        assert_eq!(checked.valid[0].code, "A-1");
    }

    #[test]
    fn a_text_cell_excel_keeps_as_a_date_is_a_row_error() {
        let (councils, _) = councils();
        let mut sheet =
            read(b"code,name,latitude,longitude,council_name\n45669,Ok,-1.9,30.1,Gasabo\n")
                .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.valid.len(), 1);
        sheet.dates.insert((2, 0));
        let checked = check(&sheet, &councils).unwrap();
        assert!(checked.valid.is_empty());
        assert_eq!(places(&checked), vec![(2, Some("code"))]);
        assert!(
            checked.errors[0]
                .message
                .contains("format the column as Text")
        );
    }

    #[test]
    fn a_blank_required_cell_is_said_to_be_required_under_the_files_own_column() {
        let (councils, _) = councils();
        let sheet =
            read(b"code,name,latitude,longitude,council_code\nA,Ok,,30.1,\nB,Ok,x,,RW-0102\n")
                .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        let said: Vec<(u32, Option<&str>, &str)> = checked
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_deref(), e.message.as_str()))
            .collect();
        assert_eq!(
            said,
            vec![
                (2, Some("latitude"), "is required"),
                (2, Some("council_code"), "is required"),
                (3, Some("latitude"), "`x` is not a number"),
                (3, Some("longitude"), "is required"),
            ]
        );
    }

    /// Each error's row and column.
    fn places(checked: &Checked) -> Vec<(u32, Option<&str>)> {
        checked
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_deref()))
            .collect()
    }

    #[test]
    fn each_bad_row_is_reported_with_its_row_and_column() {
        let (councils, _) = councils();
        let sheet = read(
            b"code,name,latitude,longitude,council_name\n\
              A,Ok,-1.9,30.1,Gasabo\n\
              ,No code,-1.9,30.1,Gasabo\n\
              B,Bad lat,95,30.1,Gasabo\n\
              C,Bad council,-1.9,30.1,Atlantis\n\
              a,Repeat,-1.9,30.1,gasabo\n\
              D,Comma decimals,\"-1,95\",\"30,05\",GASABO\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(checked.total_rows, 6);
        // Neither row of the repeated code is applied: which is right is not for the service to
        // guess.
        assert_eq!(
            checked.valid.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![7]
        );
        assert_eq!(checked.failed, 5);
        let found = places(&checked);
        assert_eq!(
            found,
            vec![
                (2, Some("code")),
                (3, Some("code")),
                (4, Some("latitude")),
                (5, Some("council_name")),
                (6, Some("code"))
            ]
        );
        assert!(checked.errors[0].message.contains("again at row 6"));
        assert!(
            checked.errors[4]
                .message
                .contains("first at row 2, refused as well")
        );
        assert_eq!(checked.valid[0].point.latitude, -1.95);
    }

    #[test]
    fn a_code_repeating_a_refused_row_says_that_row_was_refused() {
        let (councils, _) = councils();
        let sheet = read(
            b"code,name,latitude,longitude,council_name\n\
              B,Bad lat,95,30.1,Gasabo\n\
              B,Corrected,-1.9,30.1,Gasabo\n\
              C,Fine,-1.9,30.1,Gasabo\n\
              C,Again,-1.9,30.1,Gasabo\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(
            places(&checked),
            vec![
                (2, Some("latitude")),
                (3, Some("code")),
                (4, Some("code")),
                (5, Some("code"))
            ]
        );
        assert!(checked.valid.is_empty());
        assert!(
            checked.errors[1]
                .message
                .contains("first at row 2, itself refused"),
            "{:?}",
            checked.errors
        );
        assert!(
            checked.errors[2].message.contains("(again at row 5)"),
            "{:?}",
            checked.errors
        );
        assert!(
            checked.errors[3]
                .message
                .contains("(first at row 4, refused as well"),
            "{:?}",
            checked.errors
        );
    }

    #[test]
    fn a_code_repeated_by_a_row_refused_for_another_reason_refuses_the_first_too() {
        let (councils, _) = councils();
        // The correction below the stale row holds a formula's error, or a value shifted past
        // the header: the stale row is not applied on its own either.
        let sheet = read(
            b"code,name,latitude,longitude,council_name\n\
              B,Stale,-1.9,30.1,Gasabo\n\
              B,Fixed,#N/A,30.1,Gasabo\n\
              C,Stale,-1.9,30.1,Gasabo\n\
              C,Fixed,-1.9,30.1,Gasabo,KG 11 Ave\n\
              D,Alone,-1.9,30.1,Gasabo\n",
        )
        .unwrap();
        let checked = check(&sheet, &councils).unwrap();
        assert_eq!(
            checked.valid.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![6]
        );
        assert_eq!(
            places(&checked),
            vec![
                (2, Some("code")),
                (3, Some("latitude")),
                (4, Some("code")),
                (5, None)
            ]
        );
        assert!(checked.errors[0].message.contains("again at row 3"));
        assert!(checked.errors[2].message.contains("again at row 5"));
        assert_eq!(checked.failed, 4);
    }

    #[test]
    fn text_cells_are_held_to_the_facility_endpoints_limits() {
        let (councils, _) = councils();
        let mut file = b"code,name,type,address,phone,latitude,longitude,council_name\n".to_vec();
        // Past the first 64 KiB, which the reader looks at to tell text from binary.
        for i in 0..2000 {
            file.extend(format!("P{i},Padding Clinic,,,,-1.9,30.1,Gasabo\n").as_bytes());
        }
        file.extend(b"N,Bad\0Name,,,,-1.9,30.1,Gasabo\n");
        file.extend(format!("T,Long type,{},,,-1.9,30.1,Gasabo\n", "t".repeat(51)).as_bytes());
        file.extend(format!("F,Long phone,,,{},-1.9,30.1,Gasabo\n", "1".repeat(33)).as_bytes());
        file.extend(b"M,Multi-line,,\"KG 11 Ave\r\nKimironko\",,-1.9,30.1,Gasabo\n");
        // A name of nothing visible, as the endpoints refuse it.
        file.extend("Z,\u{200B}\u{2060},,,,-1.9,30.1,Gasabo\n".as_bytes());
        let checked = check(&read(&file).unwrap(), &councils).unwrap();
        let found = places(&checked);
        assert_eq!(
            found,
            vec![
                (2002, Some("name")),
                (2003, Some("type")),
                (2004, Some("contact_phone")),
                (2006, Some("name"))
            ]
        );
        let last = checked.valid.last().unwrap();
        assert_eq!(last.address.as_deref(), Some("KG 11 Ave, Kimironko"));
        assert!(checked.errors[3].message.contains("required"));
    }
}
