-- The type-name rule of 0007, checked on the name's bytes instead of its characters.
--
-- ltrim(text, text) is multibyte-aware: in a UTF-8 database it compares every character of the
-- name with each of the 62 allowed ones through the multibyte path, about 1 µs a row, a tenth
-- of a bulk-loaded row's server time. ltrim(bytea, bytea) compares plain bytes: about 0.3 µs
-- with the conversion (BENCHMARKS.md, "Bulk load"). The rule is unchanged: first letter A-Z,
-- then ASCII letters and digits, 1 to 64 bytes. A non-ASCII character has bytes from 0x80 up in
-- UTF-8, which are not in the set, so it still fails. convert_to names the encoding, so the
-- bytes do not depend on the session's client_encoding (textsend's would); decode is immutable,
-- so the set is built once per statement. ltrim(bytea, bytea) needs PostgreSQL 14.
ALTER TABLE meta.assets ADD CONSTRAINT assets_type_name_bytes CHECK (
    octet_length(type_name) BETWEEN 1 AND 64
    AND ascii(type_name) BETWEEN 65 AND 90
    AND ltrim(convert_to(type_name, 'UTF8'),
              -- A-Z a-z 0-9
              decode('4142434445464748494a4b4c4d4e4f505152535455565758595a'
                     '6162636465666768696a6b6c6d6e6f707172737475767778797a'
                     '30313233343536373839', 'hex'))
        = ''::bytea
) NOT VALID;
ALTER TABLE meta.assets VALIDATE CONSTRAINT assets_type_name_bytes;
ALTER TABLE meta.assets DROP CONSTRAINT assets_type_name_chars;
