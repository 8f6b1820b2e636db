"""Packaging for databridge-luigi. Ranges are compatible-release pins: new patch/minor releases flow in,
breaking majors do not (see README "Dependencies" for why each one is here)."""
from setuptools import find_packages, setup

setup(
    name="databridge-luigi",
    version="0.1.0",
    description="Publish a city's open datasets (Databridge/Oracle, Knack, Airtable) to CARTO or PostGIS with Luigi",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["databridge_luigi", "databridge_luigi.*"]),
    package_data={"databridge_luigi": ["py.typed"]},
    install_requires=[
        "luigi>=3.8,<4",
        "SQLAlchemy>=2.0,<2.2",
        "psycopg[binary]>=3.2,<4",
        "oracledb>=2.0,<27",
        "boto3>=1.34,<2",
        "pydantic>=2.6,<3",
        "croniter>=6.0,<8",
        "tenacity>=9.0,<10",
        "PyYAML>=6.0,<7",
        "requests>=2.32,<3",
        "pyairtable>=3.0,<4",
        "isal>=1.7,<2",
        "pyarrow>=15,<27",
        "adbc-driver-sqlite>=1.0,<2",
        "PyMySQL>=1.1,<2",
        "pyproj>=3.6,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "moto[server,s3,secretsmanager,batch]>=5.1,<6",
            "werkzeug>=3.0,<4",
            # Independent CARTO client used only to cross-check our CARTO emulator (DESIGN.md).
            "carto==1.11.3",
            "pyrestcli==0.6.11",
            "six>=1.16",
            "setuptools<82",
            # Independent ArcGIS REST clients used only to cross-check our AGO emulator (tests/test_ago_emulator.py).
            "bmi-arcgis-restapi==2.4.19",
            "esridump==1.13.0",
            "arcgis2geojson==3.1.3",
        ],
        # Peers in bench/run.py: dlt, and sling's binary (a wheel per platform; ogr2ogr comes from Debian's gdal-bin).
        "bench": ["dlt[postgres,sql_database]>=1.0,<2", "pyinstrument>=5,<6", "py-spy>=0.4,<1",
                  "sling-linux-amd64>=1.4,<2; sys_platform == 'linux' and platform_machine == 'x86_64'",
                  # dlt needs setuptools>=65.6 (a 3.11 venv ships 65.5): without this cap pip takes the newest, which
                  # has no pkg_resources, and the carto SDK of the [test] extra stops importing.
                  "setuptools<82"],
    },
    entry_points={"console_scripts": ["databridge-luigi=databridge_luigi.cli:main"]},
)
