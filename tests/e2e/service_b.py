"""Service B of the cross-service end-to-end test: a FastAPI app served by
``pulsetrace-run uvicorn service_b:app``, in its own process. It does not
import pulsetrace.

``GET /inventory/{item_id}`` reads the item's stock from a SQLite file
(``E2E_SQLITE_PATH``, made by the test). The route is a plain ``def``:
FastAPI runs it in its thread pool, where the trace has to follow it.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from fastapi import FastAPI, HTTPException

#: ``?`` placeholders, kept as they are in ``db.query.text``.
STOCK_SQL = "SELECT item, stock FROM inventory WHERE item = ?"

app = FastAPI()


@app.get("/inventory/{item_id}")
def inventory(item_id: str) -> Any:
    conn = sqlite3.connect(os.environ["E2E_SQLITE_PATH"])
    try:
        row = conn.execute(STOCK_SQL, (item_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise HTTPException(status_code=404, detail="no such item")
    return {"item": row[0], "stock": row[1], "pid": os.getpid()}
