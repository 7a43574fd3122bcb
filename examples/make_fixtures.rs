//! Writes the spreadsheet fixtures under `tests/fixtures/` and the sample XLSX under `seeds/`:
//! `cargo run --example make_fixtures`. The files are committed; this documents how they were
//! made and remakes them if the format needs to change.

use std::io::Write;

use rust_xlsxwriter::{Formula, Workbook};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reordered headers, an extra column, blank rows, codes stored as numbers, a formula cell,
    // and one invalid row (row 7: latitude out of range).
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    let headers = [
        "Latitude",
        "Longitude",
        "Code",
        "Name",
        "Notes",
        "Council Name",
        "Type",
        "Phone",
    ];
    for (c, h) in headers.iter().enumerate() {
        sheet.write_string(0, c as u16, *h)?;
    }
    let rows: [(f64, f64, f64, &str, &str, &str, &str); 4] = [
        (
            -1.9500,
            30.0588,
            5001.0,
            "Muhima District Hospital",
            "Nyarugenge",
            "hospital",
            "+250788100001",
        ),
        (
            -2.0833,
            29.7561,
            5002.0,
            "Kabgayi Hospital",
            "Muhanga",
            "hospital",
            "+250788100002",
        ),
        (
            -1.6795,
            29.3460,
            5003.0,
            "Kabaya Health Centre",
            "Ngororero",
            "health_center",
            "+250788100003",
        ),
        (
            95.0,
            30.0,
            5004.0,
            "Broken Coordinates Post",
            "Gasabo",
            "health_post",
            "",
        ),
    ];
    // Rows 2, 3, then two blank rows, then rows 6 and 7.
    for (r, row) in [1u32, 2, 5, 6].into_iter().zip(rows) {
        let (lat, lng, code, name, council, kind, phone) = row;
        sheet.write_number(r, 0, lat)?;
        sheet.write_number(r, 1, lng)?;
        sheet.write_number(r, 2, code)?;
        sheet.write_string(r, 3, name)?;
        sheet.write_string(r, 4, "extra column, ignored")?;
        sheet.write_string(r, 5, council)?;
        sheet.write_string(r, 6, kind)?;
        if !phone.is_empty() {
            sheet.write_string(r, 7, phone)?;
        }
    }
    // A formula whose cached value is read, never evaluated.
    sheet.write_formula(2, 4, Formula::new("=1+1").set_result("2"))?;
    workbook.save("tests/fixtures/facilities.xlsx")?;

    // Windows-1252, `;`-separated, French names (as Excel on a French Windows writes it).
    let text = "code;nom_ignored;name;latitude;longitude;council_name;address\r\n\
                CS-101;x;Centre de santé de Rwamagana;-1,9487;30,4347;Rwamagana;Rue de l'Hôpital\r\n\
                CS-102;x;Hôpital de district de Kibungo;-2,1597;30,5427;Ngoma;Avenue Générale\r\n\
                CS-103;x;Poste de santé Nyamata;-2,1500;30,0900;Bugesera;Près de l'église\r\n\
                CS-104;x;Dispensaire inconnu;-2,0;30,0;Atlantide;Île\r\n";
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!unmappable);
    std::fs::write("tests/fixtures/facilities_cp1252_semicolon.csv", &bytes)?;

    // A zip bomb: a valid XLSX skeleton around a sheet that inflates to 64 MiB of zeros.
    let file = std::fs::File::create("tests/fixtures/zip_bomb.xlsx")?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9));
    zip.start_file("[Content_Types].xml", options)?;
    zip.write_all(br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#)?;
    zip.start_file("xl/worksheets/sheet1.xml", options)?;
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        zip.write_all(&zeros)?;
    }
    zip.finish()?;

    // The sample for the README walk-through.
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet();
    let csv = std::fs::read_to_string("seeds/facilities.csv")?;
    for (r, line) in csv.lines().enumerate() {
        for (c, cell) in line.split(',').enumerate() {
            match (r, cell.parse::<f64>()) {
                (r, Ok(n)) if r > 0 && (c == 3 || c == 4) => {
                    sheet.write_number(r as u32, c as u16, n)?
                }
                _ => sheet.write_string(r as u32, c as u16, cell)?,
            };
        }
    }
    workbook.save("seeds/facilities.xlsx")?;
    Ok(())
}
