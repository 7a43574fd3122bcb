-- Rwanda's five provinces and thirty districts. Idempotent: safe to load on every start.
INSERT INTO regions (code, name) VALUES
    ('RW-01', 'Kigali City'),
    ('RW-02', 'Eastern Province'),
    ('RW-03', 'Northern Province'),
    ('RW-04', 'Western Province'),
    ('RW-05', 'Southern Province')
ON CONFLICT DO NOTHING;

INSERT INTO councils (region_id, code, name)
SELECT r.id, d.code, d.name
FROM (VALUES
    ('RW-01', 'RW-0101', 'Nyarugenge'),
    ('RW-01', 'RW-0102', 'Gasabo'),
    ('RW-01', 'RW-0103', 'Kicukiro'),
    ('RW-02', 'RW-0201', 'Rwamagana'),
    ('RW-02', 'RW-0202', 'Nyagatare'),
    ('RW-02', 'RW-0203', 'Gatsibo'),
    ('RW-02', 'RW-0204', 'Kayonza'),
    ('RW-02', 'RW-0205', 'Kirehe'),
    ('RW-02', 'RW-0206', 'Ngoma'),
    ('RW-02', 'RW-0207', 'Bugesera'),
    ('RW-03', 'RW-0301', 'Rulindo'),
    ('RW-03', 'RW-0302', 'Gakenke'),
    ('RW-03', 'RW-0303', 'Musanze'),
    ('RW-03', 'RW-0304', 'Burera'),
    ('RW-03', 'RW-0305', 'Gicumbi'),
    ('RW-04', 'RW-0401', 'Karongi'),
    ('RW-04', 'RW-0402', 'Rutsiro'),
    ('RW-04', 'RW-0403', 'Rubavu'),
    ('RW-04', 'RW-0404', 'Nyabihu'),
    ('RW-04', 'RW-0405', 'Ngororero'),
    ('RW-04', 'RW-0406', 'Rusizi'),
    ('RW-04', 'RW-0407', 'Nyamasheke'),
    ('RW-05', 'RW-0501', 'Nyanza'),
    ('RW-05', 'RW-0502', 'Gisagara'),
    ('RW-05', 'RW-0503', 'Nyaruguru'),
    ('RW-05', 'RW-0504', 'Huye'),
    ('RW-05', 'RW-0505', 'Nyamagabe'),
    ('RW-05', 'RW-0506', 'Ruhango'),
    ('RW-05', 'RW-0507', 'Muhanga'),
    ('RW-05', 'RW-0508', 'Kamonyi')
) AS d (region_code, code, name)
JOIN regions r ON r.code = d.region_code
ON CONFLICT DO NOTHING;
