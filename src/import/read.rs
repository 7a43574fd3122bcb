//! Reading an uploaded facility list into rows of text, whatever Excel or LibreOffice wrote:
//! XLSX (recognised by signature, not by file name), or CSV in UTF-8 (with or without BOM) or
//! Windows-1252, separated by `,`, `;` or tabs.

use std::collections::HashSet;
use std::io::{BufReader, Cursor, Read};

use calamine::{DataRef, Reader, Xlsx};
use quick_xml::events::Event;

/// Rows beyond this are refused: a facility list has thousands of rows, not millions.
pub const MAX_ROWS: usize = 200_000;
/// Columns read per row (A to BL); anything further right is ignored.
pub const MAX_COLUMNS: usize = 64;
/// Uncompressed size of an XLSX archive beyond which it is refused unopened (zip bombs).
const MAX_UNCOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;
/// Compression ratio beyond which an archive entry is taken for a bomb.
const MAX_RATIO: u64 = 200;
/// Excel's own limit on a cell's length; a longer cell was not written by a spreadsheet.
const MAX_CELL_CHARS: usize = 32_767;
/// Text the rows kept may hold in all, counting each cell's slot. A small workbook can point
/// thousands of cells at one long shared string, so the zip's size does not bound this.
const MAX_SHEET_BYTES: usize = 256 * 1024 * 1024;

/// The kind of file read, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Xlsx,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
        }
    }
}

/// A sheet as text: the header row and the data rows, each with its spreadsheet row number
/// (1-based, as the spreadsheet shows it). Blank rows are dropped but keep their numbers.
#[derive(Debug)]
pub struct Sheet {
    pub format: Format,
    pub header_row: u32,
    pub headers: Vec<String>,
    /// The header line's fields, blank ones after the last named column included (Excel pads
    /// every CSV line to the width of the sheet's used range, an unlabelled column too).
    pub header_width: usize,
    /// The header row has values past the columns read (`MAX_COLUMNS`).
    pub header_cut: bool,
    pub rows: Vec<(u32, Vec<String>)>,
    /// Each CSV row's fields, blank ones included, beside `rows` (none for a workbook).
    pub widths: Vec<usize>,
    /// The workbook cells Excel stores as dates, by row number (as in `rows`) and column: a
    /// code typed as `1-12` that Excel took for a date holds a day count, not what was typed.
    pub dates: HashSet<(u32, usize)>,
    /// The workbook's number cells shown through a format that adds text (`"HC-"000`, `00\-000`):
    /// the cell holds `12` where Excel shows `HC-012`.
    pub dressed: HashSet<(u32, usize)>,
    /// Those of them whose format also shows zeros the number lacks: `0000 000 000` shows the
    /// cell's `788123456` as `0788 123 456`.
    pub hiding_zeros: HashSet<(u32, usize)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is neither CSV nor XLSX")]
    NotSpreadsheet,
    #[error(
        "Excel 97-2003 (.xls) and OpenDocument (.ods) workbooks are not read; save the sheet as XLSX or CSV"
    )]
    OtherWorkbook,
    #[error(
        "the workbook is protected with a password, which this service cannot open: remove the password in Excel (File > Info > Protect Workbook) and save it again"
    )]
    Encrypted,
    #[error(
        "the file is UTF-8 but for a byte in line {0} (a row saved in another encoding?): save the whole file as CSV UTF-8"
    )]
    MixedEncoding(usize),
    #[error(
        "the file is a web page or XML (as some systems export for Excel), not CSV or XLSX; open it in Excel and save the sheet as XLSX or CSV"
    )]
    Markup,
    #[error(
        "a quote opened in row {0} takes in the {1} line(s) after it, which read as rows of their own: is its closing quote missing? Close or remove it and save the file again"
    )]
    UnclosedQuote(u32, u32),
    #[error("{0}")]
    TooLarge(String),
    #[error("the spreadsheet cannot be read: {0}")]
    Unreadable(String),
}

pub fn read(bytes: &[u8]) -> Result<Sheet, ReadError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ReadError::Empty);
    }
    match bytes {
        [0x50, 0x4B, 0x03, 0x04, ..] => read_zip(bytes),
        // An OLE container: an Excel 97-2003 workbook, or an XLSX that Excel encrypted with a
        // password, whose directory names its `EncryptedPackage` stream (in UTF-16).
        [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, ..] => {
            let name: Vec<u8> = "EncryptedPackage"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect();
            if bytes.windows(name.len()).any(|w| w == name) {
                Err(ReadError::Encrypted)
            } else {
                Err(ReadError::OtherWorkbook)
            }
        }
        _ => read_csv(bytes),
    }
}

fn read_zip(bytes: &[u8]) -> Result<Sheet, ReadError> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|_| ReadError::NotSpreadsheet)?;
    let mut total: u64 = 0;
    let mut is_ods = false;
    let mut is_xlsx = false;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| ReadError::Unreadable(e.to_string()))?;
        total = total.saturating_add(entry.size());
        if entry.size() > 1024 * 1024 && entry.size() / entry.compressed_size().max(1) > MAX_RATIO {
            return Err(ReadError::TooLarge(format!(
                "the spreadsheet expands to an implausible size ({} bytes from {})",
                entry.size(),
                entry.compressed_size()
            )));
        }
        match entry.name().as_deref().unwrap_or_default() {
            "[Content_Types].xml" => is_xlsx = true,
            "mimetype" => is_ods = true,
            _ => {}
        }
    }
    if total > MAX_UNCOMPRESSED_BYTES {
        return Err(ReadError::TooLarge(format!(
            "the spreadsheet expands to {total} bytes, over the {MAX_UNCOMPRESSED_BYTES} limit"
        )));
    }
    if is_xlsx && declares_a_workbook(&mut archive)? {
        check_parts(&mut archive)?;
        read_xlsx(bytes)
    } else if is_ods {
        Err(ReadError::OtherWorkbook)
    } else {
        Err(ReadError::NotSpreadsheet)
    }
}

/// Whether the package's content types name a workbook as its main part: Word and PowerPoint
/// files are the same kind of zip archive.
fn declares_a_workbook(archive: &mut zip::ZipArchive<Cursor<&[u8]>>) -> Result<bool, ReadError> {
    let unreadable = |e: &dyn std::fmt::Display| ReadError::Unreadable(e.to_string());
    let entry = archive
        .by_name("[Content_Types].xml")
        .map_err(|e| unreadable(&e))?;
    let mut types = String::new();
    entry
        .take(1024 * 1024)
        .read_to_string(&mut types)
        .map_err(|e| unreadable(&e))?;
    let types = types.to_ascii_lowercase();
    Ok([
        "spreadsheetml.sheet.main+xml",
        "spreadsheetml.template.main+xml",
        "ms-excel.sheet.macroenabled.main+xml",
        "ms-excel.template.macroenabled.main+xml",
    ]
    .iter()
    .any(|main| types.contains(main)))
}

/// Shared strings beyond which a workbook is refused: eight text cells for each of `MAX_ROWS`
/// rows. calamine holds every one (24 bytes, even an empty one) before it reads a cell, and
/// five bytes of XML (`<si/>`) make one.
const MAX_SHARED_STRINGS: u64 = 8 * MAX_ROWS as u64;
/// Cell formats beyond which a workbook is refused: Excel itself keeps at most 64,000.
const MAX_CELL_FORMATS: u64 = 65_536;
/// What calamine's copies of fonts, fills, borders and number formats may take in all (see
/// [`check_styles`]).
const MAX_STYLE_COPIES_BYTES: u64 = 64 * 1024 * 1024;

/// Checks the parts that calamine reads whole before the first cell, by what they would cost
/// it in memory rather than by their size: a part of a few kilobytes can ask for gigabytes,
/// and a failed allocation ends the process. The parts are found as calamine finds them, by
/// name, whatever their case or folder.
fn check_parts(archive: &mut zip::ZipArchive<Cursor<&[u8]>>) -> Result<(), ReadError> {
    let unreadable = |e: &dyn std::fmt::Display| ReadError::Unreadable(e.to_string());
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| unreadable(&e))?;
        let name = entry.name().map_err(|e| unreadable(&e))?;
        let name = name.replace('\\', "/").to_ascii_lowercase();
        if name.ends_with("sharedstrings.xml") {
            check_shared_strings(entry)?;
        } else if name.ends_with("styles.xml") {
            check_styles(entry)?;
        }
    }
    check_workbook(archive)
}

/// The indices of the parts calamine would open by `path`: it looks a part up by its name
/// in lower case, `\` read as `/`.
fn parts_named(archive: &zip::ZipArchive<Cursor<&[u8]>>, path: &str) -> Vec<usize> {
    let path = path.replace('\\', "/").to_ascii_lowercase();
    archive
        .file_names()
        .enumerate()
        .filter(|(_, name)| {
            name.as_ref()
                .is_ok_and(|name| name.replace('\\', "/").to_ascii_lowercase() == path)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Sheets, and relationships of the workbook, beyond which a workbook is refused: Excel's own
/// workbooks name a handful of each.
const MAX_WORKBOOK_ENTRIES: u64 = 65_536;
/// Defined names beyond which a workbook is refused: workbooks copied from one another over the
/// years gather tens of thousands, hidden; calamine keeps each as two strings.
const MAX_DEFINED_NAMES: u64 = 1_000_000;
/// What calamine's copies of sheet names and paths may take in all (see [`check_workbook`]).
const MAX_SHEET_COPIES_BYTES: u64 = 64 * 1024 * 1024;

/// Checks the workbook part and its relationships, which calamine reads whole before the
/// first cell: it keeps every sheet, defined name and relationship they list, and gives each
/// sheet its own copies of its name and of the path its relationship names, so that a
/// workbook listing millions of sheets, or thousands pointing at one long path, would ask for
/// gigabytes. The parts are found as calamine finds them, through the package's
/// `_rels/.rels`; every office document it names is checked, not only the one calamine opens.
fn check_workbook(archive: &mut zip::ZipArchive<Cursor<&[u8]>>) -> Result<(), ReadError> {
    let unreadable = |e: &dyn std::fmt::Display| ReadError::Unreadable(e.to_string());
    let too_many = || {
        ReadError::TooLarge(format!(
            "the workbook lists more than {MAX_WORKBOOK_ENTRIES} sheets or relationships, more \
             than {MAX_DEFINED_NAMES} defined names, or sheets whose names and paths would take \
             more than {} MiB to read",
            MAX_SHEET_COPIES_BYTES / (1024 * 1024)
        ))
    };
    let mut documents = Vec::new();
    for i in parts_named(archive, "_rels/.rels") {
        let part = archive.by_index(i).map_err(|e| unreadable(&e))?;
        let mut entries = 0;
        for_each_start(part, |e| {
            if e.local_name().as_ref() == "Relationship" {
                entries += 1;
                let [kind, target] = watched(e, ["Type", "Target"])?;
                if kind.is_some_and(|k| k.ends_with("/relationships/officeDocument")) {
                    documents.extend(target);
                }
            }
            Ok(entries <= MAX_WORKBOOK_ENTRIES)
        })?;
        if entries > MAX_WORKBOOK_ENTRIES {
            return Err(too_many());
        }
    }
    // Told apart as parts are found: by name in lower case, `\` read as `/`, from the root.
    let documents: std::collections::BTreeSet<String> = documents
        .into_iter()
        .map(|t| {
            let t = match quick_xml::escape::unescape(&t) {
                Ok(unescaped) => unescaped.into_owned(),
                Err(_) => t,
            };
            let t = t.replace('\\', "/").to_ascii_lowercase();
            t.strip_prefix('/').map(str::to_string).unwrap_or(t)
        })
        .collect();
    if documents.len() > 1 {
        return Err(ReadError::Unreadable(
            "the package names more than one main document, which no spreadsheet program writes"
                .into(),
        ));
    }
    for target in documents {
        let (folder, name) = target.split_at(target.rfind('/').map_or(0, |i| i + 1));
        let folder = folder.strip_prefix('/').unwrap_or(folder);
        let name = if name.is_empty() {
            "workbook.xml"
        } else {
            name
        };
        // Each sheet is charged the longest path a relationship names, whichever it names.
        let (mut relationships, mut longest) = (0u64, 0u64);
        for i in parts_named(archive, &format!("{folder}_rels/{name}.rels")) {
            let part = archive.by_index(i).map_err(|e| unreadable(&e))?;
            for_each_start(part, |e| {
                if e.local_name().as_ref() == "Relationship" {
                    relationships += 1;
                    let [target] = watched(e, ["Target"])?;
                    longest = longest.max((folder.len() + target.map_or(0, |t| t.len())) as u64);
                }
                Ok(relationships <= MAX_WORKBOOK_ENTRIES)
            })?;
        }
        if relationships > MAX_WORKBOOK_ENTRIES {
            return Err(too_many());
        }
        for i in parts_named(archive, &format!("{folder}{name}")) {
            let part = archive.by_index(i).map_err(|e| unreadable(&e))?;
            let (mut sheets, mut names, mut copies) = (0u64, 0u64, 0u64);
            let within = |sheets, names, copies| {
                sheets <= MAX_WORKBOOK_ENTRIES
                    && names <= MAX_DEFINED_NAMES
                    && copies <= MAX_SHEET_COPIES_BYTES
            };
            for_each_start(part, |e| {
                match e.local_name().as_ref() {
                    "sheet" => {
                        sheets += 1;
                        let [sheet] = watched(e, ["name"])?;
                        copies += 2 * sheet.map_or(0, |s| s.len()) as u64 + longest;
                    }
                    "definedName" => names += 1,
                    _ => {}
                }
                Ok(within(sheets, names, copies))
            })?;
            if !within(sheets, names, copies) {
                return Err(too_many());
            }
        }
    }
    Ok(())
}

/// Hands each element that `part` opens to `seen`, until it answers `false` or the part ends
/// (calamine reports a broken part itself).
fn for_each_start<R: Read>(
    part: R,
    mut seen: impl FnMut(&quick_xml::events::BytesStart<'_>) -> Result<bool, ReadError>,
) -> Result<(), ReadError> {
    let mut xml = xml_reader(part);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match xml.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                if !seen(&e)? {
                    return Ok(());
                }
            }
            Ok(Event::Eof) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

fn xml_reader<R: Read>(part: R) -> quick_xml::Reader<BufReader<R>> {
    let mut xml = quick_xml::Reader::from_reader(BufReader::new(part));
    xml.config_mut().check_end_names = false;
    xml.config_mut().check_comments = false;
    // `<si/>` and `<numFmt …/>` arrive as a start and an end, as their longer forms do.
    xml.config_mut().expand_empty_elements = true;
    xml
}

/// calamine sets aside room for as many shared strings as the part's `uniqueCount` says, before
/// it reads one: a few bytes declaring 10^14 would ask for petabytes. A count beyond what the
/// part could hold (each string takes at least `<si/>`, five bytes) is refused, and so is a
/// part declaring or holding more than [`MAX_SHARED_STRINGS`].
fn check_shared_strings<R: Read>(part: zip::read::ZipFile<'_, R>) -> Result<(), ReadError> {
    let most = part.size() / 5;
    let mut strings: u64 = 0;
    for_each_start(part, |e| {
        match e.local_name().as_ref() {
            "sst" => {
                let [declared] = watched(e, ["uniqueCount"])?;
                let declared = declared
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
                if declared.is_some_and(|n| n > most) {
                    return Err(ReadError::Unreadable(
                        "the workbook declares more shared strings than it holds".into(),
                    ));
                }
                if declared.is_some_and(|n| n > MAX_SHARED_STRINGS) {
                    return Err(too_many_strings());
                }
            }
            "si" => {
                strings += 1;
                if strings > MAX_SHARED_STRINGS {
                    return Err(too_many_strings());
                }
            }
            _ => {}
        }
        Ok(true)
    })
}

fn too_many_strings() -> ReadError {
    ReadError::TooLarge(format!(
        "the workbook holds more than {MAX_SHARED_STRINGS} different texts"
    ))
}

/// The values of `keys` on an element, read as calamine reads them: its attributes split by its
/// rules (which count a form feed as a space, and allow spaces around `=`, where the XML reader
/// here does not), each key matched whole. An element naming one twice, or under a prefix, or
/// with attributes calamine cannot split, is refused: Excel writes each once and unqualified,
/// and the checks must read the very value that calamine will.
fn watched<const N: usize>(
    e: &quick_xml::events::BytesStart<'_>,
    keys: [&str; N],
) -> Result<[Option<String>; N], ReadError> {
    let refuse = |what: &str| {
        ReadError::Unreadable(format!(
            "an element of the workbook {what}, which no spreadsheet program writes"
        ))
    };
    let raw: &str = e.attributes_raw();
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut rest = raw.trim_start_matches(|c: char| c.is_ascii_whitespace());
    while !rest.is_empty() {
        // calamine's `RawAttrIter`: the key runs to `=`, less trailing spaces; the value is
        // quoted, after any spaces.
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| refuse("has an attribute without a value"))?;
        let key = key.trim_end_matches(|c: char| c.is_ascii_whitespace());
        let after = after.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let quote = after
            .chars()
            .next()
            .filter(|q| matches!(q, '"' | '\''))
            .ok_or_else(|| refuse("has an attribute without quotes"))?;
        let (value, tail) = after[1..].split_once(quote).unwrap_or((&after[1..], ""));
        for (i, k) in keys.iter().enumerate() {
            let prefixed = key.strip_suffix(k).is_some_and(|p| p.ends_with(':'));
            if key == *k && values[i].is_none() {
                values[i] = Some(value.to_string());
            } else if key == *k || prefixed {
                return Err(refuse(&format!("gives its {k} twice, or under a prefix")));
            }
        }
        rest = tail.trim_start_matches(|c: char| c.is_ascii_whitespace());
    }
    Ok(values)
}

/// calamine builds one style for each cell format (`<xf>` in `<cellXfs>`) of `styles.xml`, and
/// gives each its own copy of the font, fill, border and number format it names: a part
/// repeating one long font name in ten thousand formats, a few kilobytes zipped, would ask for
/// gigabytes. The part is read here as calamine reads it, the same lists in the same order, and
/// each format is charged the size (as written) of the definitions it names, as far as they are
/// known when it is read; the total and the count of formats are bounded. Excel writes at most
/// 64,000 formats, font names of at most 31 characters and number formats of at most 255, so no
/// workbook it wrote comes near.
fn check_styles<R: Read>(part: zip::read::ZipFile<'_, R>) -> Result<(), ReadError> {
    // The attributes by which a format names its definitions (and a number format its own id).
    const IDS: [&str; 4] = ["numFmtId", "fontId", "fillId", "borderId"];
    let mut xml = xml_reader(part);
    let mut buf = Vec::new();
    let mut inner = Vec::new();
    // The size of each definition, by its place in its list (numbers formats by their id).
    let mut fonts: Vec<u64> = Vec::new();
    let mut fills: Vec<u64> = Vec::new();
    let mut borders: Vec<u64> = Vec::new();
    let mut number_formats: std::collections::HashMap<String, u64> = Default::default();
    let (mut formats, mut copies) = (0u64, 0u64);
    // The list being read, as calamine's own loop is in one list at a time.
    let mut list: Option<String> = None;
    loop {
        buf.clear();
        let began = xml.buffer_position();
        let (start, name) = match xml.read_event_into(&mut buf) {
            // calamine reports a broken part itself.
            Ok(Event::Eof) | Err(_) => return Ok(()),
            Ok(Event::Start(e)) => (Some(watched(&e, IDS)?), e.local_name().as_ref().to_string()),
            Ok(Event::End(e)) => (None, e.local_name().as_ref().to_string()),
            Ok(_) => continue,
        };
        let Some(start) = start else {
            match &list {
                Some(open) if *open == name => list = None,
                None if name == "styleSheet" => return Ok(()),
                _ => {}
            }
            continue;
        };
        let attribute = |key: &str| {
            IDS.iter()
                .position(|k| *k == key)
                .and_then(|i| start[i].clone())
        };
        let index = |key: &str| attribute(key).and_then(|v| v.parse::<usize>().ok());
        match (list.as_deref(), name.as_str()) {
            (None, "numFmts" | "fonts" | "fills" | "borders" | "cellXfs") => list = Some(name),
            (Some("numFmts"), "numFmt") => {
                if let Some(id) = attribute("numFmtId") {
                    number_formats.insert(id, xml.buffer_position() - began);
                }
            }
            (Some("fonts"), "font") | (Some("fills"), "fill") | (Some("borders"), "border") => {
                // Read whole, as calamine reads it: to its end tag, wherever that is.
                loop {
                    inner.clear();
                    match xml.read_event_into(&mut inner) {
                        Ok(Event::End(e)) if e.local_name().as_ref() == name.as_str() => break,
                        Ok(Event::Eof) | Err(_) => return Ok(()),
                        Ok(_) => {}
                    }
                }
                let size = xml.buffer_position() - began;
                match name.as_str() {
                    "font" => fonts.push(size),
                    "fill" => fills.push(size),
                    _ => borders.push(size),
                }
            }
            (Some("cellXfs"), "xf") => {
                formats += 1;
                let named = |sizes: &[u64], key: &str| {
                    index(key).and_then(|i| sizes.get(i).copied()).unwrap_or(0)
                };
                copies += named(&fonts, "fontId")
                    + named(&fills, "fillId")
                    + named(&borders, "borderId")
                    + attribute("numFmtId")
                        .and_then(|id| number_formats.get(&id).copied())
                        .unwrap_or(0);
                if formats > MAX_CELL_FORMATS || copies > MAX_STYLE_COPIES_BYTES {
                    return Err(ReadError::TooLarge(format!(
                        "the workbook's styles would take more than {} MiB to read (over \
                         {MAX_CELL_FORMATS} cell formats, or formats naming fonts, fills, borders \
                         or number formats far longer than a spreadsheet program writes)",
                        MAX_STYLE_COPIES_BYTES / (1024 * 1024)
                    )));
                }
            }
            _ => {}
        }
    }
}

/// How many newer Excel errors a workbook may hold that the reader has to be shown as text.
const MAX_UNKNOWN_ERRORS: usize = 8;

/// Streams the first worksheet cell by cell, so memory follows the rows kept, not the sheet.
fn read_xlsx(bytes: &[u8]) -> Result<Sheet, ReadError> {
    let mut patched: Option<Vec<u8>> = None;
    for _ in 0..=MAX_UNKNOWN_ERRORS {
        let current = patched.as_deref().unwrap_or(bytes);
        match read_worksheet(current)? {
            Pass::Read(sheet) => return Ok(*sheet),
            Pass::UnknownError(value) => patched = Some(errors_as_text(current, &value)?),
        }
    }
    Err(ReadError::Unreadable(format!(
        "the sheet holds more than {MAX_UNKNOWN_ERRORS} kinds of Excel error"
    )))
}

enum Pass {
    Read(Box<Sheet>),
    /// An error cell whose value the reader does not know (it knows Excel's seven classic
    /// ones, not `#SPILL!`, `#CALC!` or `#GETTING_DATA`), which stops it.
    UnknownError(String),
}

/// The workbook with every error cell showing `value` made a text cell of the same words, which
/// the row check reports as Excel's error: the `t="e"` of the `<c>` tag before each
/// `<v>value</v>` of the worksheets becomes `t="str"`. Only those parts are written again.
fn errors_as_text(bytes: &[u8], value: &str) -> Result<Vec<u8>, ReadError> {
    use std::io::Write;
    let broken = |e: &dyn std::fmt::Display| ReadError::Unreadable(e.to_string());
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| broken(&e))?;
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::with_capacity(bytes.len())));
    let marker = format!("<v>{value}</v>");
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| broken(&e))?;
        let name = entry.name().map_err(|e| broken(&e))?.into_owned();
        if !(name.starts_with("xl/worksheets/") && name.ends_with(".xml")) {
            out.raw_copy_file(entry).map_err(|e| broken(&e))?;
            continue;
        }
        let mut xml = Vec::with_capacity(entry.size() as usize);
        entry
            .take(MAX_UNCOMPRESSED_BYTES)
            .read_to_end(&mut xml)
            .map_err(|e| broken(&e))?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        out.start_file(name, options).map_err(|e| broken(&e))?;
        out.write_all(&as_text(&xml, marker.as_bytes()))
            .map_err(|e| broken(&e))?;
    }
    Ok(out.finish().map_err(|e| broken(&e))?.into_inner())
}

/// `xml` with `t="e"` made `t="str"` in the start tag of each `<c>` holding `marker`.
fn as_text(xml: &[u8], marker: &[u8]) -> Vec<u8> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut out = Vec::with_capacity(xml.len());
    // Written up to `done`; the previous marker ended at `from` (a cell's tag comes after it).
    let mut done = 0;
    let mut from = 0;
    while let Some(at) = find(&xml[from..], marker).map(|i| from + i) {
        let after = from;
        from = at + marker.len();
        let Some(cell) = xml[after..at]
            .windows(3)
            .rposition(|w| w == b"<c ")
            .map(|i| after + i)
        else {
            continue;
        };
        let tag_end = xml[cell..at]
            .iter()
            .position(|&b| b == b'>')
            .map_or(at, |i| cell + i);
        if let Some(t) = find(&xml[cell..tag_end], b" t=\"e\"").map(|i| cell + i) {
            out.extend_from_slice(&xml[done..t]);
            out.extend_from_slice(b" t=\"str\"");
            done = t + b" t=\"e\"".len();
        }
    }
    out.extend_from_slice(&xml[done..]);
    out
}

fn read_worksheet(bytes: &[u8]) -> Result<Pass, ReadError> {
    let mut workbook: Xlsx<_> =
        Xlsx::new(Cursor::new(bytes)).map_err(|e| ReadError::Unreadable(e.to_string()))?;
    // The first worksheet Excel shows: a hidden sheet (an old copy kept out of sight) or a
    // chart is passed over.
    let worksheets: Vec<&calamine::Sheet> = workbook
        .sheets_metadata()
        .iter()
        .filter(|sheet| sheet.typ == calamine::SheetType::WorkSheet)
        .collect();
    let name = worksheets
        .iter()
        .find(|sheet| sheet.visible == calamine::SheetVisible::Visible)
        .or(worksheets.first())
        .map(|sheet| sheet.name.clone())
        .ok_or_else(|| ReadError::Unreadable("the workbook has no worksheet".into()))?;
    let mut cells = workbook
        .worksheet_cells_reader(&name)
        .map_err(|e| ReadError::Unreadable(e.to_string()))?;
    // What each style's number format shows, read once rather than at every cell of it.
    let shown_by_style: Vec<Shown> = cells
        .styles()
        .iter()
        .map(|style| {
            style
                .number_format
                .as_ref()
                .map(|format| Shown::of(&format.format_code))
                .unwrap_or_default()
        })
        .collect();
    let plain = Shown::default();
    let mut grid = Grid::new(Format::Xlsx);
    loop {
        let (cell, style) = match cells.next_cell_with_style_id() {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(calamine::XlsxError::CellError(value)) => return Ok(Pass::UnknownError(value)),
            Err(e) => return Err(ReadError::Unreadable(e.to_string())),
        };
        let (row, col) = cell.get_position();
        let value = cell.get_value();
        // Cells that would be dropped are dropped before their text is copied: a sheet can point
        // millions of them at one long shared string.
        if col as usize >= MAX_COLUMNS {
            if !matches!(value, DataRef::Empty) {
                grid.cut(row);
            }
            continue;
        }
        let text = match value {
            DataRef::String(s) => Some(s.as_str()),
            DataRef::SharedString(s) => Some(*s),
            _ => None,
        };
        if text.is_some_and(|t| t.trim().is_empty()) {
            continue;
        }
        // Checked before the text is copied, as well as when it is kept.
        check_length(row, col, text.unwrap_or_default())?;
        let text = match value {
            DataRef::Float(_) | DataRef::Int(_) => {
                let text = cell_text(value);
                let shown = shown_by_style.get(style).unwrap_or(&plain);
                if shown.text {
                    grid.dressed(row, col, shown.zeros > text.len());
                }
                padded(text, shown)
            }
            DataRef::DateTime(_) | DataRef::DateTimeIso(_) => {
                grid.date(row, col);
                cell_text(value)
            }
            _ => cell_text(value),
        };
        grid.put(row, col, text)?;
    }
    grid.finish().map(|sheet| Pass::Read(Box::new(sheet)))
}

/// Formulas are read as the values the spreadsheet last computed; nothing is evaluated.
fn cell_text(value: &DataRef<'_>) -> String {
    match value {
        DataRef::Empty => String::new(),
        DataRef::String(s) => s.clone(),
        DataRef::SharedString(s) => (*s).to_string(),
        DataRef::Float(f) => float_text(*f),
        DataRef::Int(i) => i.to_string(),
        DataRef::Bool(b) => b.to_string(),
        DataRef::DateTime(d) => d.to_string(),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.clone(),
        // Shown as Excel shows it (`#N/A`); the row check refuses it.
        DataRef::Error(e) => e.to_string(),
    }
}

/// `1001.0` (a code stored as a number) reads as `1001`; other numbers keep their digits. A
/// whole number of 16 digits or more reads as Excel shows it, `1.23456789012345E+18`, when it
/// is one Excel shortened (it keeps 15 digits of a number typed, and zeros for the rest) or one
/// too long to be held exactly; one another program wrote exactly keeps its digits.
fn float_text(f: f64) -> String {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.fract() != 0.0 {
        return format!("{f}");
    }
    let whole = format!("{}", f as i64);
    let digits = whole.trim_start_matches('-');
    let shortened = digits.len() > 15 && digits.bytes().skip(15).all(|b| b == b'0');
    if f.abs() >= EXACT || shortened {
        format!("{f:E}").replacen('E', "E+", 1)
    } else {
        whole
    }
}

/// What a number format shows of a positive number, read from its first section (the later
/// ones are for negative numbers, zero and text).
#[derive(Debug, Default, PartialEq)]
struct Shown {
    /// Its `0` digit slots, each shown even when the number has no digit for it.
    zeros: usize,
    /// Anything else that places or changes digits (`#`, `?`, `.`, `,`, `%`, `E+`), or that is
    /// not understood (`General`): the number is not read as zeros alone would show it.
    other: bool,
    /// It shows text beside the digits (`"HC-"000`, `00\-000`, `00-000`, `000 000`,
    /// `[$RWF-487]0`): text in quotes, a character escaped with a backslash, one Excel shows as
    /// it is (`-`, `(`, `$`, ...), a currency symbol, or a space between digits (a cell's text is
    /// trimmed, so one before or after them shows nothing). Colours, conditions and locales
    /// (`[Red]`, `[<=99]`, `[$-409]`), the room `_x` keeps and the fill `*x` show no text.
    text: bool,
}

impl Shown {
    fn of(format: &str) -> Self {
        let mut shown = Shown::default();
        let mut chars = format.chars();
        // A digit shown, and a space shown after it.
        let (mut digit, mut spaced) = (false, false);
        while let Some(c) = chars.next() {
            let literal: String = match c {
                ';' => break,
                '0' | '#' | '?' => {
                    shown.text |= spaced;
                    if c == '0' {
                        shown.zeros += 1;
                    } else {
                        shown.other = true;
                    }
                    digit = true;
                    continue;
                }
                '"' => chars.by_ref().take_while(|&c| c != '"').collect(),
                '\\' => chars.next().map(String::from).unwrap_or_default(),
                '$' | '-' | '+' | '/' | '(' | ')' | ':' | '!' | '^' | '&' | '\'' | '~' | '{'
                | '}' | '<' | '>' | '=' | '%' | ' ' => c.to_string(),
                '_' | '*' => {
                    chars.next();
                    continue;
                }
                '[' => {
                    let inside: String = chars.by_ref().take_while(|&c| c != ']').collect();
                    // `[$RWF-487]`: a currency symbol, shown; `[$-409]`: a locale, not.
                    let symbol = inside.strip_prefix('$').map(|s| s.split('-').next());
                    shown.text |= symbol.flatten().is_some_and(|s| !s.is_empty());
                    continue;
                }
                _ => {
                    shown.other = true;
                    continue;
                }
            };
            shown.text |= !literal.trim().is_empty();
            spaced |= digit && !literal.is_empty();
        }
        shown
    }
}

/// A whole number shown through a format of zeros alone (`00000`, `[Blue]00000;[Red]-00000`),
/// as Excel keeps codes and phone numbers with leading zeros, reads as the sheet shows it: `123`
/// as `00123`, as Excel's own CSV export writes it.
fn padded(text: String, shown: &Shown) -> String {
    if !shown.text
        && !shown.other
        && shown.zeros > text.len()
        && text.bytes().all(|b| b.is_ascii_digit())
    {
        format!("{text:0>width$}", width = shown.zeros)
    } else {
        text
    }
}

/// Refuses a cell longer than a spreadsheet can hold (`row` and `col` from 0).
fn check_length(row: u32, col: u32, text: &str) -> Result<(), ReadError> {
    if text.len() > MAX_CELL_CHARS && text.chars().count() > MAX_CELL_CHARS {
        return Err(ReadError::TooLarge(format!(
            "the cell in row {}, column {} holds more than {MAX_CELL_CHARS} characters, Excel's \
             own limit",
            row + 1,
            col + 1
        )));
    }
    Ok(())
}

/// Collects cells into rows keyed by spreadsheet row, finding the header as the first
/// non-blank row.
struct Grid {
    format: Format,
    header: Option<(u32, Vec<String>)>,
    header_width: usize,
    rows: Vec<(u32, Vec<String>)>,
    widths: Vec<usize>,
    current: Option<(u32, Vec<String>)>,
    /// The fields of the CSV line being put, blank ones included.
    width: usize,
    /// What the cells kept take, text and slots, against `MAX_SHEET_BYTES`.
    bytes: usize,
    /// Rows read before the header was known that had values past `MAX_COLUMNS` (from 0).
    cut_rows: Vec<u32>,
    dates: HashSet<(u32, usize)>,
    dressed: HashSet<(u32, usize)>,
    hiding_zeros: HashSet<(u32, usize)>,
}

impl Grid {
    fn new(format: Format) -> Self {
        Self {
            format,
            header: None,
            header_width: 0,
            rows: Vec::new(),
            widths: Vec::new(),
            current: None,
            width: 0,
            bytes: 0,
            cut_rows: Vec::new(),
            dates: HashSet::new(),
            dressed: HashSet::new(),
            hiding_zeros: HashSet::new(),
        }
    }

    /// Notes that the cell about to be put is a date; what noting it takes counts against
    /// `MAX_SHEET_BYTES` with the cell.
    fn date(&mut self, row: u32, col: u32) {
        self.bytes += 2 * std::mem::size_of::<(u32, usize)>();
        self.dates.insert((row + 1, col as usize));
    }

    /// Notes that the number about to be put shows through a format that adds text, and
    /// whether that shows zeros the number lacks, counted as [`Grid::date`] counts.
    fn dressed(&mut self, row: u32, col: u32, hiding_zeros: bool) {
        self.bytes += 2 * std::mem::size_of::<(u32, usize)>();
        self.dressed.insert((row + 1, col as usize));
        if hiding_zeros {
            self.bytes += 2 * std::mem::size_of::<(u32, usize)>();
            self.hiding_zeros.insert((row + 1, col as usize));
        }
    }

    /// Cells arrive row by row, left to right (as spreadsheets store them).
    fn put(&mut self, row: u32, col: u32, text: String) -> Result<(), ReadError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        if col as usize >= MAX_COLUMNS {
            self.cut(row);
            return Ok(());
        }
        check_length(row, col, &text)?;
        if self.current.as_ref().is_some_and(|(r, _)| *r != row) {
            self.flush()?;
        }
        let (_, cells) = self.current.get_or_insert_with(|| (row, Vec::new()));
        let col = col as usize;
        let slots = (col + 1).saturating_sub(cells.len());
        self.bytes += text.len() + slots * std::mem::size_of::<String>();
        if self.bytes > MAX_SHEET_BYTES {
            return Err(ReadError::TooLarge(format!(
                "the sheet holds more than {} MiB of text",
                MAX_SHEET_BYTES / (1024 * 1024)
            )));
        }
        if slots > 0 {
            cells.resize(col + 1, String::new());
        }
        cells[col] = text;
        Ok(())
    }

    /// Notes a value past the columns read, in a row that may be the header.
    fn cut(&mut self, row: u32) {
        if self.header.is_none() && self.cut_rows.last() != Some(&row) && self.cut_rows.len() < 64 {
            self.cut_rows.push(row);
        }
    }

    fn flush(&mut self) -> Result<(), ReadError> {
        if let Some((row, cells)) = self.current.take() {
            let width = self.width.max(cells.len());
            let numbered = (row + 1, cells);
            if self.header.is_none() {
                self.header = Some(numbered);
                self.header_width = width;
            } else {
                if self.rows.len() >= MAX_ROWS {
                    return Err(too_many_rows());
                }
                self.rows.push(numbered);
                if self.format == Format::Csv {
                    self.widths.push(width);
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Sheet, ReadError> {
        self.flush()?;
        let (header_row, headers) = self.header.ok_or(ReadError::Empty)?;
        Ok(Sheet {
            format: self.format,
            header_cut: self.cut_rows.contains(&(header_row - 1)),
            header_row,
            header_width: self.header_width,
            headers,
            rows: self.rows,
            widths: self.widths,
            dates: self.dates,
            dressed: self.dressed,
            hiding_zeros: self.hiding_zeros,
        })
    }
}

fn too_many_rows() -> ReadError {
    ReadError::TooLarge(format!("the file has more than {MAX_ROWS} rows"))
}

/// Text that is not UTF-8 is taken for Windows-1252, what Excel writes on Western Windows.
fn decode(bytes: &[u8]) -> Result<String, ReadError> {
    // Excel's "Unicode Text" export: UTF-16 with its byte order mark, tab-separated.
    let utf16 = match bytes {
        [0xFF, 0xFE, rest @ ..] => Some(encoding_rs::UTF_16LE.decode_without_bom_handling(rest).0),
        [0xFE, 0xFF, rest @ ..] => Some(encoding_rs::UTF_16BE.decode_without_bom_handling(rest).0),
        _ => None,
    };
    if let Some(text) = utf16 {
        if looks_binary(text.chars()) {
            return Err(ReadError::NotSpreadsheet);
        }
        return Ok(text.trim_end_matches(DOS_END_OF_FILE).to_string());
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let end = bytes
        .iter()
        .rposition(|&b| b != DOS_END_OF_FILE as u8)
        .map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if looks_binary(bytes.iter().filter(|b| b.is_ascii()).map(|&b| b as char)) {
        return Err(ReadError::NotSpreadsheet);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        // Some text is UTF-8 beyond ASCII, and some is not: read as Windows-1252, every accent
        // written as UTF-8 would be garbled without a word.
        Err(e) if holds_utf8_text(bytes) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            Err(ReadError::MixedEncoding(line + 1))
        }
        Err(_) => {
            let (text, _, _) = encoding_rs::WINDOWS_1252.decode(bytes);
            Ok(text.into_owned())
        }
    }
}

/// Whether some of `bytes` is text written as UTF-8 beyond ASCII: a character of three or four
/// bytes (punctuation, other scripts), or of two that is a Latin letter with its accent
/// (U+00A0–U+017F). Windows-1252 text makes such a sequence only by a chance its writers do
/// not meet (`Ã` or `Â` before a symbol, `â€™`), where an accented capital before a symbol
/// (`É»`, also UTF-8 for `ɻ`) is ordinary.
fn holds_utf8_text(bytes: &[u8]) -> bool {
    bytes.utf8_chunks().any(|chunk| {
        chunk
            .valid()
            .chars()
            .any(|c| c.len_utf8() > 2 || matches!(c, '\u{A0}'..='\u{17F}'))
    })
}

/// Ends some files that older DOS and Windows programs write.
const DOS_END_OF_FILE: char = '\x1A';

/// A binary file, whatever its name: a NUL among the first 64 Ki characters, or control
/// characters other than tab, CR, LF and form feed in more than one in a hundred of them (and
/// more than eight, so that a short file's one stray character is not enough). A
/// stray one (a vertical tab some exporters write for a line break in a cell) is left to the
/// row checks, which name its row and column.
fn looks_binary(chars: impl Iterator<Item = char>) -> bool {
    let (mut seen, mut control) = (0usize, 0usize);
    for c in chars.take(64 * 1024) {
        if c == '\0' {
            return true;
        }
        seen += 1;
        control += usize::from(c < ' ' && !matches!(c, '\t' | '\r' | '\n' | '\x0C'));
    }
    control > 8 && control * 100 > seen
}

/// The separator that splits the header line into the most fields.
fn sniff_delimiter(text: &str) -> u8 {
    let header = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|&d| {
            let mut in_quotes = false;
            header
                .bytes()
                .filter(|&b| {
                    if b == b'"' {
                        in_quotes = !in_quotes;
                    }
                    b == d && !in_quotes
                })
                .count()
        })
        .unwrap_or(b',')
}

/// A quoted cell whose lines after the first read as rows of their own: a quote left open (csv
/// reads on to the next quote, across line breaks), which has taken in the rows below it. A line
/// reads as a row when it has the fields of the required columns (five: four separators, or all
/// of the header's if fewer) and two of them are decimal numbers (a row's coordinates), which an
/// address over several lines does not have. The number of lines it took in.
fn swallowed_rows(record: &csv::StringRecord, delimiter: u8, width: usize) -> Option<u32> {
    let whole_row = width.saturating_sub(1).clamp(2, 4);
    let decimal = |field: &str| {
        let field = field.trim().replace(',', ".");
        field.contains('.') && field.parse::<f64>().is_ok()
    };
    let reads_as_row = |line: &str| {
        let fields: Vec<&str> = line.split(delimiter as char).collect();
        fields.len() > whole_row && fields.iter().filter(|f| decimal(f)).count() >= 2
    };
    record.iter().find_map(|field| {
        let lines: Vec<&str> = field
            .split(['\r', '\n'])
            .filter(|line| !line.is_empty())
            .skip(1)
            .collect();
        (!lines.is_empty() && lines.iter().any(|line| reads_as_row(line)))
            .then_some(lines.len() as u32)
    })
}

fn read_csv(bytes: &[u8]) -> Result<Sheet, ReadError> {
    let text = decode(bytes)?;
    // An HTML table or an Excel 2003 XML workbook saved as `.xls`: read as CSV it would only
    // be missing every column.
    if text
        .trim_start_matches('\u{FEFF}')
        .trim_start()
        .starts_with('<')
    {
        return Err(ReadError::Markup);
    }
    // `sep=;` on the first line, which Excel reads as the separator to use and does not show:
    // taken as such and removed, so that the header is row 1 as on Excel's screen.
    let mut text = text;
    let sep = text
        .trim_start_matches('\u{FEFF}')
        .lines()
        .next()
        .and_then(|line| line.trim_end_matches([' ', '\r']).strip_prefix("sep="))
        .and_then(|rest| match rest.as_bytes() {
            [b] if matches!(b, b',' | b';' | b'\t' | b'|') => Some(*b),
            _ => None,
        });
    if sep.is_some() {
        let end = text.find(['\r', '\n']).unwrap_or(text.len());
        let rest = &text[end..];
        let line_break = if rest.starts_with("\r\n") {
            2
        } else {
            usize::from(rest.starts_with(['\r', '\n']))
        };
        text.replace_range(..end + line_break, "");
    }
    let delimiter = sep.unwrap_or_else(|| sniff_delimiter(&text));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut grid = Grid::new(Format::Csv);
    // The csv reader skips blank lines, and its own line count lags behind them. A record's
    // spreadsheet row is its first line, counted here from the bytes read whatever ends the
    // lines, less the extra lines of the multi-line quoted cells before it (each is one row).
    let bytes = text.as_bytes();
    let breaks = |from: usize, to: usize| -> u32 {
        (from..to)
            .filter(|&i| match bytes[i] {
                b'\n' => true,
                b'\r' => bytes.get(i + 1) != Some(&b'\n'),
                _ => false,
            })
            .count() as u32
    };
    let (mut scanned, mut read_to, mut lines_before, mut extra) = (0, 0, 0, 0);
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let end = (reader.position().byte() as usize).min(bytes.len());
                let start = read_to
                    + bytes[read_to..end]
                        .iter()
                        .take_while(|b| matches!(b, b'\r' | b'\n'))
                        .count();
                lines_before += breaks(scanned, start);
                (scanned, read_to) = (start, end);
                let row = 1 + lines_before - extra;
                let width = match grid.header {
                    Some(_) => grid.header_width,
                    None => record.len(),
                };
                if let Some(lines) = swallowed_rows(&record, delimiter, width) {
                    return Err(ReadError::UnclosedQuote(row, lines));
                }
                grid.width = record.len();
                for (col, field) in record.iter().enumerate() {
                    extra += field.matches('\n').count() as u32
                        + field.matches('\r').count() as u32
                        - field.matches("\r\n").count() as u32;
                    grid.put(row - 1, col as u32, field.to_string())?;
                }
                // Each line is a row (or, the first with a value, the header) with its width.
                grid.flush()?;
            }
            Err(e) => return Err(ReadError::Unreadable(e.to_string())),
        }
    }
    grid.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_left_open_is_refused_rather_than_taking_in_the_rows_below() {
        let csv = "name,code,latitude,longitude,council_name,address\n\
                   Clinic A,HC-1,-1.9,30.1,Gasabo,\"Near the market\n\
                   Clinic B,HC-2,-1.9,30.1,Gasabo,KG 7 Ave\n\
                   Clinic C,HC-3,-1.9,30.1,Gasabo,\"KG 9 Ave\"\n";
        assert_eq!(
            read(csv.as_bytes()).err(),
            Some(ReadError::UnclosedQuote(2, 2))
        );
        // Rows without their optional columns are taken in too.
        let csv = "name,code,latitude,longitude,council_name,address,contact_phone\n\
                   Clinic A,HC-1,-1.9,30.1,Gasabo,\"Near the market\n\
                   Clinic B,HC-2,-1.9,30.1,Gasabo\n\
                   Clinic C,HC-3,-1.9,30.1,Gasabo,\"KG 9 Ave\"\n";
        assert_eq!(
            read(csv.as_bytes()).err(),
            Some(ReadError::UnclosedQuote(2, 2))
        );
        // An address over two lines, with commas, is a cell like any other.
        let csv = "name,code,latitude,longitude,council_name,address\n\
                   Clinic A,HC-1,-1.9,30.1,Gasabo,\"KG 11 Ave,\nPlot 4, Kimironko, Gasabo, Kigali, Rwanda\"\n\
                   Clinic B,HC-2,-1.9,30.1,Gasabo,KG 7 Ave\n";
        assert_eq!(read(csv.as_bytes()).unwrap().rows.len(), 2);
    }

    #[test]
    fn a_sep_line_names_the_separator_and_is_not_the_header() {
        let sheet = read(b"sep=;\r\ncode;name, long\r\nA;One, two\r\n").unwrap();
        assert_eq!(sheet.header_row, 1);
        assert_eq!(sheet.headers, ["code", "name, long"]);
        assert_eq!(
            sheet.rows,
            [(2, vec!["A".to_string(), "One, two".to_string()])]
        );
        let sheet = read("\u{FEFF}sep=;\ncode;name\n\nA;One\n".as_bytes()).unwrap();
        assert_eq!((sheet.header_row, sheet.rows[0].0), (1, 3));
        let sheet = read(b"sep=\t \r\ncode\tname, long\r\nA\tOne, two\r\n").unwrap();
        assert_eq!(sheet.headers, ["code", "name, long"]);
        assert_eq!(sheet.rows[0].0, 2);
    }

    #[test]
    fn csv_rows_keep_their_spreadsheet_numbers_across_blank_lines() {
        let sheet = read(b"code,name\nA,One\n\n\nB,Two\n,\nC,Three\n").unwrap();
        assert_eq!(sheet.header_row, 1);
        let numbers: Vec<u32> = sheet.rows.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![2, 5, 7]);
        for text in [
            "code,name\nA,x\n\nB,y",
            "code,name\r\nA,x\r\n\r\nB,y",
            "code,name\r\nA,x\r\n\r\nB,y\r\n",
            "code,name\rA,x\r\rB,y\r",
        ] {
            let sheet = read(text.as_bytes()).unwrap();
            let numbers: Vec<u32> = sheet.rows.iter().map(|(n, _)| *n).collect();
            assert_eq!(numbers, vec![2, 4], "{text:?}");
        }
        let sheet = read(b"code,name\nA,x").unwrap();
        assert_eq!(sheet.rows[0].0, 2);
        let sheet = read(b"\n\ncode,name\r\nA,\"one\r\ntwo\"\r\n\r\nB,y").unwrap();
        assert_eq!(sheet.header_row, 3);
        let numbers: Vec<u32> = sheet.rows.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![4, 6]);
    }

    #[test]
    fn a_sheet_whose_text_outgrows_the_budget_is_refused_not_held() {
        let mut grid = Grid::new(Format::Xlsx);
        let long = "A".repeat(MAX_CELL_CHARS);
        let mut refused = None;
        for row in 0..=(MAX_SHEET_BYTES / MAX_CELL_CHARS) as u32 {
            if let Err(e) = grid.put(row, 0, long.clone()) {
                refused = Some((row, e));
                break;
            }
        }
        let (row, error) = refused.expect("the budget stops the sheet");
        assert!(matches!(error, ReadError::TooLarge(_)), "{error:?}");
        assert!(row as usize > MAX_SHEET_BYTES / MAX_CELL_CHARS * 9 / 10);
    }

    #[test]
    fn a_csv_cell_longer_than_excel_holds_is_refused_where_it_is() {
        let csv = format!("code,address\nA,{}\n", "é".repeat(MAX_CELL_CHARS + 1));
        let error = read(csv.as_bytes()).unwrap_err();
        assert!(
            matches!(&error, ReadError::TooLarge(m) if m.contains("row 2, column 2")),
            "{error:?}"
        );
        let csv = format!("code,address\nA,{}\n", "é".repeat(MAX_CELL_CHARS));
        assert_eq!(read(csv.as_bytes()).unwrap().rows.len(), 1);
    }

    #[test]
    fn a_utf8_file_with_a_line_in_another_encoding_is_refused_not_garbled() {
        let mixed = "code,name\nA,Centre de santé\nB,Poste ".as_bytes();
        let bytes = [mixed, b"\xC9cole\n"].concat();
        assert_eq!(read(&bytes).unwrap_err(), ReadError::MixedEncoding(3));
        let other_script = "code,name\nA,Trạm Y tế\nB,Poste ".as_bytes();
        let bytes = [other_script, b"\xC9cole\n"].concat();
        assert_eq!(read(&bytes).unwrap_err(), ReadError::MixedEncoding(3));
        // Windows-1252 throughout is read as such, even where two of its letters happen to
        // make a UTF-8 sequence.
        let sheet = read(b"code,name\nA,Centre de sant\xE9\nB,Poste \xC9cole\n").unwrap();
        assert_eq!(sheet.rows[1].1[1], "Poste École");
        let sheet =
            read(b"code,name\nA,\xABCENTRE DE SANT\xC9\xBB\nB,D\xC9P\xD4T\x96NORD \xE9\n").unwrap();
        assert_eq!(sheet.rows[0].1[1], "«CENTRE DE SANTÉ»");
        assert_eq!(sheet.rows[1].1[1], "DÉPÔT–NORD é");
    }

    #[test]
    fn a_workbook_encrypted_with_a_password_is_named_as_such() {
        let ole = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
        let stream: Vec<u8> = "EncryptedPackage"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let encrypted = [&ole[..], &[0; 504], &stream, &[0; 64]].concat();
        assert_eq!(read(&encrypted).unwrap_err(), ReadError::Encrypted);
        let xls = [&ole[..], &[0; 504]].concat();
        assert_eq!(read(&xls).unwrap_err(), ReadError::OtherWorkbook);
    }

    #[test]
    fn a_multi_line_cell_is_one_row() {
        let sheet = read(b"code,address\nA,\"line one\nline two\"\nB,x\n").unwrap();
        let numbers: Vec<u32> = sheet.rows.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![2, 3]);
        assert_eq!(sheet.rows[0].1[1], "line one\nline two");
    }

    #[test]
    fn semicolons_bom_and_windows_1252_are_understood() {
        let mut bytes = b"code;name\nA;Centre de sant\xE9 \xC9cole\n".to_vec();
        let sheet = read(&bytes).unwrap();
        assert_eq!(sheet.rows[0].1[1], "Centre de santé École");
        bytes = "\u{FEFF}code,name\nA,Café\n".as_bytes().to_vec();
        let sheet = read(&bytes).unwrap();
        assert_eq!(sheet.headers[0], "code");
        assert_eq!(sheet.rows[0].1[1], "Café");
    }

    #[test]
    fn excel_unicode_text_is_read() {
        let text = "name\tcode\tcouncil\r\nCentre de santé Kimironko\tKIM-1\tGasabo\r\n";
        for (bom, units) in [
            (
                [0xFF, 0xFE],
                text.encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<_>>(),
            ),
            (
                [0xFE, 0xFF],
                text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
            ),
        ] {
            let bytes: Vec<u8> = bom.into_iter().chain(units).collect();
            let sheet = read(&bytes).unwrap();
            assert_eq!(sheet.headers, vec!["name", "code", "council"]);
            assert_eq!(sheet.rows[0].1[0], "Centre de santé Kimironko");
            assert_eq!(sheet.rows[0].0, 2);
        }
        let mut binary = vec![0xFF, 0xFE];
        binary.extend("a\u{0}b".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(read(&binary).unwrap_err(), ReadError::NotSpreadsheet);
    }

    #[test]
    fn binary_and_empty_files_are_refused() {
        assert_eq!(read(b"").unwrap_err(), ReadError::Empty);
        assert_eq!(read(b"  \n\n").unwrap_err(), ReadError::Empty);
        assert_eq!(
            read(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0]).unwrap_err(),
            ReadError::NotSpreadsheet
        );
        assert_eq!(
            read(b"PK\x03\x04garbage").unwrap_err(),
            ReadError::NotSpreadsheet
        );
        // A DOS end-of-file mark, or a stray control character in a cell, is text's.
        let csv = "name,code,latitude,longitude,council_name,address\r\n\
                   Clinic A,HC-1,-1.9,30.1,Gasabo,KG 7 Ave\x0BKimironko\r\n\x1A";
        let sheet = read(csv.as_bytes()).unwrap();
        assert_eq!(sheet.rows.len(), 1);
        assert_eq!(sheet.rows[0].1[5], "KG 7 Ave\x0BKimironko");
    }

    #[test]
    fn numbers_read_as_codes_without_a_decimal_point() {
        assert_eq!(float_text(1001.0), "1001");
        assert_eq!(float_text(-1.9456), "-1.9456");
        // Past 15 digits: as Excel shows a number it shortened, or one too long to be exact;
        // one written exactly by another program keeps its digits.
        assert_eq!(float_text(1_234_567_890_123_450.0), "1.23456789012345E+15");
        assert_eq!(
            float_text(1_234_567_890_123_456_789.0),
            "1.2345678901234568E+18"
        );
        assert_eq!(float_text(1_234_567_890_123_456.0), "1234567890123456");
    }

    #[test]
    fn the_first_worksheet_shown_is_read_and_its_date_cells_are_known() {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let old = workbook.add_worksheet().set_name("old copy").unwrap();
        old.write_string(0, 0, "stale").unwrap();
        old.set_hidden(true);
        let sheet = workbook.add_worksheet();
        sheet.set_active(true);
        sheet.write_string(0, 0, "code").unwrap();
        sheet.write_string(0, 1, "name").unwrap();
        let day = rust_xlsxwriter::ExcelDateTime::from_ymd(2025, 1, 12).unwrap();
        let shown = rust_xlsxwriter::Format::new().set_num_format("d-mmm");
        sheet
            .write_datetime_with_format(1, 0, &day, &shown)
            .unwrap();
        sheet.write_string(1, 1, "Kimironko").unwrap();
        sheet.write_string(2, 0, "1-12").unwrap();
        let bytes = workbook.save_to_buffer().unwrap();
        let sheet = read(&bytes).unwrap();
        assert_eq!(sheet.headers, ["code", "name"]);
        assert_eq!(sheet.rows[0].1[0], "45669");
        assert_eq!(sheet.dates, HashSet::from([(2, 0)]));
    }

    #[test]
    fn an_error_cell_newer_than_the_reader_reads_as_its_text() {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let sheet = workbook.add_worksheet();
        sheet.write_string(0, 0, "code").unwrap();
        sheet.write_string(0, 1, "name").unwrap();
        sheet.write_string(1, 0, "HC-1").unwrap();
        // Stored as Excel stores a formula's error: `<c … t="e"><f>…</f><v>#GETTING_DATA</v>`.
        let waiting =
            rust_xlsxwriter::Formula::new("=WEBSERVICE(\"x\")").set_result("#GETTING_DATA");
        sheet.write_formula(1, 1, waiting).unwrap();
        sheet.write_string(2, 0, "HC-2").unwrap();
        sheet.write_string(2, 1, "Kimironko").unwrap();
        let bytes = workbook.save_to_buffer().unwrap();
        // The reader stops at it, as it would at `#SPILL!` or `#CALC!`.
        assert!(matches!(
            read_worksheet(&bytes),
            Ok(Pass::UnknownError(value)) if value == "#GETTING_DATA"
        ));
        let sheet = read(&bytes).unwrap();
        let cells =
            |row: usize| -> Vec<&str> { sheet.rows[row].1.iter().map(String::as_str).collect() };
        assert_eq!(cells(0), ["HC-1", "#GETTING_DATA"]);
        assert_eq!(cells(1), ["HC-2", "Kimironko"]);
    }

    #[test]
    fn only_the_error_cells_showing_the_value_become_text() {
        let xml = br#"<row><c r="A1" t="e"><v>#SPILL!</v></c><c r="B1" t="str"><v>#SPILL!</v></c><c r="C1" s="2" t="e"><f>X</f><v>#CALC!</v></c><c r="D1" t="e"><v>#SPILL!</v></c></row>"#;
        assert_eq!(
            String::from_utf8(as_text(xml, b"<v>#SPILL!</v>")).unwrap(),
            r#"<row><c r="A1" t="str"><v>#SPILL!</v></c><c r="B1" t="str"><v>#SPILL!</v></c><c r="C1" s="2" t="e"><f>X</f><v>#CALC!</v></c><c r="D1" t="str"><v>#SPILL!</v></c></row>"#
        );
    }

    #[test]
    fn numbers_shown_with_leading_zeros_keep_them() {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let zeros = |n: usize| rust_xlsxwriter::Format::new().set_num_format("0".repeat(n));
        let sheet = workbook.add_worksheet();
        sheet.write_string(0, 0, "code").unwrap();
        sheet.write_string(0, 1, "phone").unwrap();
        sheet.write_string(0, 2, "latitude").unwrap();
        sheet
            .write_number_with_format(1, 0, 123, &zeros(5))
            .unwrap();
        sheet
            .write_number_with_format(1, 1, 788_123_456, &zeros(10))
            .unwrap();
        sheet
            .write_number_with_format(1, 2, -1.5, &zeros(3))
            .unwrap();
        sheet
            .write_number_with_format(2, 0, 123_456, &zeros(5))
            .unwrap();
        sheet.write_number(2, 1, 42).unwrap();
        // Text in a column of that format is shown as typed.
        sheet
            .write_string_with_format(2, 2, "123", &zeros(5))
            .unwrap();
        let bytes = workbook.save_to_buffer().unwrap();
        let sheet = read(&bytes).unwrap();
        let cells =
            |row: usize| -> Vec<&str> { sheet.rows[row].1.iter().map(String::as_str).collect() };
        assert_eq!(cells(0), ["00123", "0788123456", "-1.5"]);
        assert_eq!(cells(1), ["123456", "42", "123"]);
    }
}
