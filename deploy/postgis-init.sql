-- Local PostGIS for docker compose: the roles the example configs grant SELECT to, as on CARTO.
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE ROLE publicuser NOLOGIN;
CREATE ROLE tileuser NOLOGIN;
