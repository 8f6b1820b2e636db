-- CARTO database functions for the CARTO emulator (tests/emulators/carto.py).
--
-- Written from the behaviour described in shared/reference/external-apis.md §1.7, §8.5 and §8.6 and
-- checked against what cartodb-postgresql 0.37.1 does (not copied from it). The emulator runs this file in
-- its database as a superuser, then calls CDB_SetUserQuotaInBytes(<schema>, <bytes>) once per account.
-- Everything here lives in schema cartodb, the extension's schema on a genuine CARTO database, which is on
-- every emulated user's search_path: "public, cartodb" for a non-organization account (its tables live
-- in public), "<user>, cartodb, public" for an organization member. Idempotent: safe to run again.

CREATE SCHEMA IF NOT EXISTS cartodb;
GRANT USAGE ON SCHEMA cartodb TO PUBLIC;

-- When each cartodbfied table last changed (cartodb.CDB_TableMetadata, kept by the track_updates trigger).
CREATE TABLE IF NOT EXISTS cartodb.CDB_TableMetadata (
    tabname regclass NOT NULL PRIMARY KEY,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Per-user quota: creates <schema>._CDB_UserQuotaInBytes(), the function that both the COPY FROM
-- quota check (§8.5) and CDB_CartodbfyTable's prerequisites (§1.7) look for.
CREATE OR REPLACE FUNCTION cartodb.CDB_SetUserQuotaInBytes(schema_name text, bytes int8)
RETURNS int8
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %I._CDB_UserQuotaInBytes() RETURNS int8 LANGUAGE sql IMMUTABLE AS %L',
        schema_name, format('SELECT %s::int8', bytes));
    RETURN bytes;
END
$fn$;

CREATE OR REPLACE FUNCTION cartodb.CDB_SetUserQuotaInBytes(bytes int8)
RETURNS int8
LANGUAGE sql VOLATILE AS $fn$
    SELECT cartodb.CDB_SetUserQuotaInBytes('public', bytes);
$fn$;

-- Bytes used by the tables of one schema; the COPY FROM quota check subtracts it from the quota.
CREATE OR REPLACE FUNCTION cartodb.CDB_UserDataSize(schema_name text)
RETURNS int8
LANGUAGE sql STABLE AS $fn$
    SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relkind IN ('r', 'm');
$fn$;

-- Web Mercator copy of a geometry: latitudes beyond Mercator's limit are clipped first, because
-- ST_Transform to 3857 fails (or explodes) at the poles. SRID 0 is taken to mean 4326.
CREATE OR REPLACE FUNCTION cartodb.CDB_TransformToWebmercator(geom geometry)
RETURNS geometry
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
    lat_limit CONSTANT float8 := 85.0511287798066;
    g geometry := geom;
BEGIN
    IF ST_SRID(g) = 3857 THEN
        RETURN g;
    END IF;
    IF ST_SRID(g) = 0 THEN
        g := ST_SetSRID(g, 4326);
    ELSIF ST_SRID(g) <> 4326 THEN
        g := ST_Transform(g, 4326);
    END IF;
    IF NOT ST_IsEmpty(g) AND (ST_YMin(g::box3d) < -lat_limit OR ST_YMax(g::box3d) > lat_limit) THEN
        g := ST_Intersection(g, ST_MakeEnvelope(-180, -lat_limit, 180, lat_limit, 4326));
    END IF;
    RETURN ST_Transform(g, 3857);
END
$fn$;

-- Row trigger keeping the_geom_webmercator in sync with the_geom on INSERT and UPDATE OF the_geom.
CREATE OR REPLACE FUNCTION cartodb._CDB_update_the_geom_webmercator()
RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    NEW.the_geom_webmercator := cartodb.CDB_TransformToWebmercator(NEW.the_geom);
    RETURN NEW;
END
$fn$;

-- Trigger function of test_quota / test_quota_per_row (cartodbfy creates both). Arguments, as on the
-- genuine server: probability of checking, a fallback quota ('-1': none) and the user's schema. With that
-- probability it measures the schema's data and refuses the write when the quota is exceeded.
CREATE OR REPLACE FUNCTION cartodb.CDB_CheckQuota()
RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    schema_name text := 'public';
    qmax int8;
    used int8;
BEGIN
    IF TG_NARGS = 3 THEN
        schema_name := TG_ARGV[2];
        IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = schema_name) THEN
            RAISE EXCEPTION 'Invalid schema name "%"', schema_name;
        END IF;
    END IF;
    BEGIN
        EXECUTE format('SELECT %I._CDB_UserQuotaInBytes()', schema_name) INTO qmax;
    EXCEPTION WHEN undefined_function THEN
        IF TG_NARGS >= 2 AND TG_ARGV[1] <> '-1' THEN
            qmax := TG_ARGV[1]::int8;
        ELSE
            RAISE EXCEPTION 'Missing "%"._CDB_UserQuotaInBytes()', schema_name;
        END IF;
    END;
    IF random() < TG_ARGV[0]::float8 AND qmax <> 0 THEN
        used := cartodb.CDB_UserDataSize(schema_name);
        IF used > qmax THEN
            RAISE EXCEPTION 'Quota exceeded by %KB', (used - qmax) / 1024;
        END IF;
    END IF;
    RETURN NEW;
END
$fn$;

-- Trigger function of track_updates (statement level, after any write): records when the table changed.
-- SECURITY DEFINER, as on the genuine server: users cannot write CDB_TableMetadata themselves.
CREATE OR REPLACE FUNCTION cartodb.CDB_TableMetadata_Trigger()
RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_temp AS $fn$
BEGIN
    IF TG_RELID = 'cartodb.cdb_tablemetadata'::regclass::oid THEN
        RETURN NULL;
    END IF;
    DELETE FROM cartodb.CDB_TableMetadata m WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.tabname);
    INSERT INTO cartodb.CDB_TableMetadata (tabname, updated_at) VALUES (TG_RELID, now())
    ON CONFLICT (tabname) DO UPDATE SET updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END
$fn$;

-- Drops the four CARTO triggers (DROP TRIGGER IF EXISTS: a table without them gets the "does not exist,
-- skipping" NOTICEs, which the SQL API returns in "notices", as the genuine server's cartodbfy does).
CREATE OR REPLACE FUNCTION cartodb._CDB_drop_triggers(reloid regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS track_updates ON %s', reloid);
    EXECUTE format('DROP TRIGGER IF EXISTS update_the_geom_webmercator_trigger ON %s', reloid);
    EXECUTE format('DROP TRIGGER IF EXISTS test_quota ON %s', reloid);
    EXECUTE format('DROP TRIGGER IF EXISTS test_quota_per_row ON %s', reloid);
END
$fn$;

-- Creates the four CARTO triggers of a cartodbfied table.
CREATE OR REPLACE FUNCTION cartodb._CDB_create_triggers(schema_name text, reloid regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    EXECUTE format('CREATE TRIGGER track_updates AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION cartodb.CDB_TableMetadata_Trigger()', reloid);
    EXECUTE format('CREATE TRIGGER update_the_geom_webmercator_trigger BEFORE INSERT OR UPDATE OF the_geom ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION cartodb._CDB_update_the_geom_webmercator()', reloid);
    EXECUTE format('CREATE TRIGGER test_quota BEFORE UPDATE OR INSERT ON %s '
                   'EXECUTE FUNCTION cartodb.CDB_CheckQuota(0.1, %L, %L)', reloid, '-1', schema_name);
    EXECUTE format('CREATE TRIGGER test_quota_per_row BEFORE UPDATE OR INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION cartodb.CDB_CheckQuota(0.001, %L, %L)', reloid, '-1', schema_name);
END
$fn$;

-- The two prerequisite errors of §1.7, with the real messages.
CREATE OR REPLACE FUNCTION cartodb._CDB_check_prerequisites(schema_name text, reloid regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = schema_name) THEN
        RAISE EXCEPTION 'Invalid schema name "%"', schema_name;
    END IF;
    BEGIN
        EXECUTE format('SELECT %I._CDB_UserQuotaInBytes()', schema_name);
    EXCEPTION WHEN undefined_function THEN
        RAISE EXCEPTION 'Please set user quota before cartodbfying tables.';
    END;
END
$fn$;

-- Type name (pg_type.typname) of a column, or NULL when the table has no such column.
CREATE OR REPLACE FUNCTION cartodb._CDB_column_type(reloid regclass, colname text)
RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT t.typname::text
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = reloid AND a.attname = colname AND a.attnum > 0 AND NOT a.attisdropped;
$fn$;

-- SRID declared by a geometry column's type modifier (0 when unconstrained or absent).
CREATE OR REPLACE FUNCTION cartodb._CDB_column_srid(reloid regclass, colname text)
RETURNS integer
LANGUAGE sql STABLE AS $fn$
    SELECT COALESCE(
        (SELECT CASE WHEN a.atttypmod < 0 THEN 0 ELSE postgis_typmod_srid(a.atttypmod) END
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = reloid AND a.attname = colname AND a.attnum > 0 AND NOT a.attisdropped
           AND t.typname = 'geometry'),
        0);
$fn$;

-- A name "<base>_<n>" that no column of the table uses yet: where columns whose names CARTO reserves
-- (cartodb_id, the_geom, the_geom_webmercator) but whose contents are unusable get moved to.
CREATE OR REPLACE FUNCTION cartodb._CDB_unused_column_name(reloid regclass, base text)
RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    n integer := 1;
BEGIN
    WHILE cartodb._CDB_column_type(reloid, base || '_' || n) IS NOT NULL LOOP
        n := n + 1;
    END LOOP;
    RETURN base || '_' || n;
END
$fn$;

-- True when the table already is a valid CARTO table, so cartodbfying it again must not rewrite it:
-- integer cartodb_id as the whole primary key, the_geom in 4326 and the_geom_webmercator in 3857.
CREATE OR REPLACE FUNCTION cartodb._CDB_is_cartodbfied(reloid regclass)
RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT cartodb._CDB_column_type(reloid, 'cartodb_id') IN ('int4', 'int8')
       AND cartodb._CDB_column_srid(reloid, 'the_geom') = 4326
       AND cartodb._CDB_column_srid(reloid, 'the_geom_webmercator') = 3857
       AND COALESCE((
           SELECT array_agg(a.attname::text ORDER BY a.attname) = ARRAY['cartodb_id']
           FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
           WHERE i.indrelid = reloid AND i.indisprimary), false);
$fn$;

-- True when an index of access method `method` covers exactly the column `colname`.
CREATE OR REPLACE FUNCTION cartodb._CDB_has_index(reloid regclass, colname text, method text)
RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = reloid AND i.indnatts = 1 AND a.attname = colname AND am.amname = method);
$fn$;

-- A sequence name "<relname>_cartodb_id_seq" (numbered when taken) free in schema relschema.
CREATE OR REPLACE FUNCTION cartodb._CDB_unused_sequence_name(relschema text, relname text)
RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    seqbase text := left(relname, 48) || '_cartodb_id_seq';
    seqname text := seqbase;
    n integer := 0;
BEGIN
    WHILE to_regclass(format('%I.%I', relschema, seqname)) IS NOT NULL LOOP
        n := n + 1;
        seqname := seqbase || n;
    END LOOP;
    RETURN seqname;
END
$fn$;

-- Everything a valid CARTO table carries besides its columns: a sequence owned by cartodb_id as its
-- default, the primary key, GiST indexes on both geometry columns and the four CARTO triggers
-- (track_updates, update_the_geom_webmercator_trigger, test_quota, test_quota_per_row).
CREATE OR REPLACE FUNCTION cartodb._CDB_finish_cartodbfy(reloid regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    relschema text;
    relname text;
    seqname text;
    pkey_name text;
BEGIN
    SELECT ns.nspname, c.relname INTO relschema, relname
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
    WHERE c.oid = reloid;

    seqname := pg_get_serial_sequence(reloid::text, 'cartodb_id');
    IF seqname IS NULL THEN
        seqname := cartodb._CDB_unused_sequence_name(relschema, relname);
        EXECUTE format('CREATE SEQUENCE %I.%I', relschema, seqname);
        EXECUTE format('ALTER SEQUENCE %I.%I OWNED BY %s.cartodb_id', relschema, seqname, reloid);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN cartodb_id SET DEFAULT nextval(%L::regclass)',
                       reloid, format('%I.%I', relschema, seqname));
        seqname := format('%I.%I', relschema, seqname);
    END IF;
    EXECUTE format('SELECT setval(%L::regclass, COALESCE(max(cartodb_id), 0) + 1, false) FROM %s',
                   seqname, reloid);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN cartodb_id SET NOT NULL', reloid);

    SELECT ic.relname INTO pkey_name
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = reloid AND i.indisprimary;
    IF pkey_name IS NOT NULL AND NOT cartodb._CDB_is_cartodbfied(reloid) THEN
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', reloid, pkey_name);
        pkey_name := NULL;
    END IF;
    IF pkey_name IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (cartodb_id)', reloid);
    END IF;

    IF NOT cartodb._CDB_has_index(reloid, 'the_geom', 'gist') THEN
        EXECUTE format('CREATE INDEX ON %s USING gist (the_geom)', reloid);
    END IF;
    IF NOT cartodb._CDB_has_index(reloid, 'the_geom_webmercator', 'gist') THEN
        EXECUTE format('CREATE INDEX ON %s USING gist (the_geom_webmercator)', reloid);
    END IF;

    PERFORM cartodb._CDB_create_triggers(relschema, reloid);  -- CDB_CartodbfyTable dropped them first
END
$fn$;

-- CDB_CartodbfyTable(destschema, reloid): turn any table into a CARTO table in destschema (§1.7).
-- reloid is a regclass, so an unqualified name is resolved through search_path (§8.6): with
-- ('<user>', 't') and a public.t but no <user>.t, public.t is rewritten into <user>.t.
-- Unless the table is already valid (then only the extras are ensured), it is rewritten with
-- CREATE TABLE AS: cartodb_id, the_geom (4326), the_geom_webmercator (3857), then the other columns in
-- their original order minus the consumed source geometry column. The rewrite is why indexes,
-- constraints, defaults and grants of the original table are gone afterwards.
CREATE OR REPLACE FUNCTION cartodb.CDB_CartodbfyTable(destschema text, reloid regclass)
RETURNS regclass
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    relschema text;
    relname text;
    col record;
    id_type text;
    id_expr text := NULL;
    geom_src text := NULL;
    geom_value text := NULL;
    the_geom_expr text;
    select_list text;
    usable boolean;
    tmpname text;
    seqname text := NULL;
    result regclass;
BEGIN
    PERFORM cartodb._CDB_check_prerequisites(destschema, reloid);

    SELECT ns.nspname, c.relname INTO relschema, relname
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
    WHERE c.oid = reloid;

    PERFORM cartodb._CDB_drop_triggers(reloid);  -- NOTICEs on a table that has none, as on the genuine server

    IF relschema = destschema AND cartodb._CDB_is_cartodbfied(reloid) THEN
        PERFORM cartodb._CDB_finish_cartodbfy(reloid);
        RETURN reloid;
    END IF;

    -- cartodb_id: keep existing values when they are unique, non-null integers.
    id_type := cartodb._CDB_column_type(reloid, 'cartodb_id');
    IF id_type IS NOT NULL THEN
        RAISE NOTICE 'Column cartodb_id already exists';
        BEGIN
            EXECUTE format('SELECT count(*) = count(DISTINCT cartodb_id::integer) '
                           'AND count(*) = count(cartodb_id) FROM %s', reloid) INTO usable;
        EXCEPTION WHEN OTHERS THEN
            usable := false;
        END;
        IF usable THEN
            id_expr := 'cartodb_id::integer';
        END IF;
    END IF;
    IF id_expr IS NULL THEN
        -- New ids come from a new sequence (bigint: nextval), as the genuine server's rewrite does.
        seqname := cartodb._CDB_unused_sequence_name(destschema, relname);
        EXECUTE format('CREATE SEQUENCE %I.%I', destschema, seqname);
        id_expr := format('nextval(%L::regclass)', format('%I.%I', destschema, seqname));
    END IF;

    -- Source geometry: the_geom if it is a geometry, else the first geometry column, else a text
    -- the_geom whose values all parse as WKT/EWKT/hex EWKB.
    IF cartodb._CDB_column_type(reloid, 'the_geom') = 'geometry' THEN
        geom_src := 'the_geom';
    ELSE
        SELECT a.attname::text INTO geom_src
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = reloid AND a.attnum > 0 AND NOT a.attisdropped AND t.typname = 'geometry'
        ORDER BY (a.attname = 'the_geom_webmercator'), a.attnum
        LIMIT 1;
    END IF;
    IF geom_src IS NOT NULL THEN
        geom_value := format('%I', geom_src);
    ELSIF cartodb._CDB_column_type(reloid, 'the_geom') IN ('text', 'varchar', 'bpchar') THEN
        BEGIN
            EXECUTE format('SELECT count(NULLIF(the_geom, '''')::geometry) >= 0 FROM %s', reloid) INTO usable;
        EXCEPTION WHEN OTHERS THEN
            usable := false;
        END;
        IF usable THEN
            geom_src := 'the_geom';
            geom_value := 'NULLIF(the_geom, '''')::geometry';
        END IF;
    END IF;

    IF geom_value IS NULL THEN
        the_geom_expr := 'NULL::geometry(Geometry,4326)';
    ELSE
        the_geom_expr := format(
            '(CASE WHEN ST_SRID(%1$s) = 0 THEN ST_SetSRID(%1$s, 4326) ELSE ST_Transform(%1$s, 4326) END)'
            '::geometry(Geometry,4326)', geom_value);
    END IF;

    select_list := format('%s AS cartodb_id, %s AS the_geom, '
                          'cartodb.CDB_TransformToWebmercator(%s)::geometry(Geometry,3857) AS the_geom_webmercator',
                          id_expr, the_geom_expr, the_geom_expr);

    FOR col IN
        SELECT a.attname::text AS name, t.typname::text AS typname
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = reloid AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
    LOOP
        IF col.name = geom_src THEN
            CONTINUE;  -- consumed into the_geom
        ELSIF col.name = 'the_geom_webmercator' AND col.typname = 'geometry' THEN
            CONTINUE;  -- regenerated from the_geom
        ELSIF col.name = 'cartodb_id' AND id_expr = 'cartodb_id::integer' THEN
            CONTINUE;  -- already first
        ELSIF col.name IN ('cartodb_id', 'the_geom', 'the_geom_webmercator') THEN
            tmpname := cartodb._CDB_unused_column_name(reloid, col.name);
            RAISE NOTICE 'Column % renamed to %', col.name, tmpname;
            select_list := select_list || format(', %I AS %I', col.name, tmpname);
        ELSE
            select_list := select_list || format(', %I', col.name);
        END IF;
    END LOOP;

    tmpname := left(relname, 40) || '_cdbfy_' || substr(md5(clock_timestamp()::text || random()::text), 1, 8);
    EXECUTE format('CREATE TABLE %I.%I AS SELECT %s FROM %s', destschema, tmpname, select_list, reloid);
    EXECUTE format('DROP TABLE %s', reloid);
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', destschema, tmpname, relname);

    result := format('%I.%I', destschema, relname)::regclass;
    IF seqname IS NOT NULL THEN
        EXECUTE format('ALTER SEQUENCE %I.%I OWNED BY %s.cartodb_id', destschema, seqname, result);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN cartodb_id SET DEFAULT nextval(%L::regclass)',
                       result, format('%I.%I', destschema, seqname));
    END IF;
    PERFORM cartodb._CDB_finish_cartodbfy(result);
    RETURN result;
END
$fn$;

CREATE OR REPLACE FUNCTION cartodb.CDB_CartodbfyTable(reloid regclass)
RETURNS regclass
LANGUAGE sql VOLATILE AS $fn$
    SELECT cartodb.CDB_CartodbfyTable('public', reloid);
$fn$;
