"""What every Autodidact service needs: settings, database, tables, queue, artifacts, modeling."""
