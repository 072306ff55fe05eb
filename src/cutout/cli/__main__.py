from cutout.cli import app

app()
