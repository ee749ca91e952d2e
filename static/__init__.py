"""The dashboard's files; a package only so that it ships inside the wheel as gateway.static."""
