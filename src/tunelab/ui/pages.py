"""The dashboard's pages: runs table, a run, its predictions, compare, tuning studies, new run, jobs; and their
JSON endpoints.

Every route here is behind the web app's sign-in (serve/auth.py): the router depends on
`require_session`, and every state-changing form on `require_csrf`. Pages are the shared Jinja2
templates (`templates/ui/`); charts are drawn in the browser by the vendored uPlot from the JSON
endpoints, by an external script (the CSP forbids inline code).
"""

from __future__ import annotations

import io
import zipfile

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunelab.core.errors import UserError
from tunelab.serve.auth import Session, require_csrf, require_session
from tunelab.serve.errors import ApiError
from tunelab.serve.ui import render
from tunelab.ui import compare as compare_data
from tunelab.ui import curves, newrun, studies
from tunelab.ui import predictions as preds
from tunelab.ui.index import COLUMNS, select
from tunelab.ui.jobs import resume_supported
from tunelab.ui.runpage import run_context
from tunelab.ui.state import Dashboard, RunNotFound, dashboard

router = APIRouter(prefix="/ui", dependencies=[Depends(require_session)])

# The dashboard's links in the app bar of every page of the app (serve/layout.html shows `app_nav`).
# The runs page waits this long for a scan of the runs folder, then shows the rows read so far (see summaries_within).
RUNS_PAGE_WAIT_S = 0.7
NAV = [("/ui/runs", "Runs"), ("/ui/compare", "Compare"), ("/ui/studies", "Studies"), ("/ui/new", "New run"),
       ("/ui/jobs", "Jobs")]


def page(request: Request, template: str, session: Session, status: int = 200, **context) -> HTMLResponse:
    return render(request, f"ui/{template}.html", status=status, session=session, **context)


def _run(dash: Dashboard, name: str):
    try:
        return dash.run(name)
    except RunNotFound:
        raise ApiError(404, f"no run named {name!r} in {dash.runs_dir}", "not_found") from None


def _study(dash: Dashboard, name: str):
    try:
        return dash.study(name)
    except RunNotFound:
        raise ApiError(404, f"no tuning study named {name!r} in {dash.runs_dir}", "not_found") from None


# ---------------------------------------------------------------- runs table


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(request: Request, q: str = "", status: str = "", task: str = "", tag: str = "",
                    sort: str = "created", desc: bool = True, session: Session = Depends(require_session)):
    dash = dashboard(request)
    every, reading = await run_in_threadpool(dash.index.summaries_within, RUNS_PAGE_WAIT_S)
    rows = select(every, q, status, task, tag, sort, desc)
    tags = sorted({t for s in every for t in s.tags})
    return page(request, "runs", session, rows=rows, total=len(every), reading=reading, columns=COLUMNS, tags=tags,
                statuses=sorted({s.status for s in every}), tasks=sorted({s.task for s in every}),
                filters={"q": q, "status": status, "task": task, "tag": tag, "sort": sort, "desc": desc})


@router.get("/api/runs")
async def runs_json(request: Request, q: str = "", status: str = "", task: str = "", tag: str = "",
                    sort: str = "created", desc: bool = True):
    every = await run_in_threadpool(dashboard(request).index.summaries)
    return {"runs": [s.as_dict() for s in select(every, q, status, task, tag, sort, desc)]}


# ---------------------------------------------------------------- one run


@router.get("/runs/{name}", response_class=HTMLResponse)
async def run_page(request: Request, name: str, session: Session = Depends(require_session)):
    dash = dashboard(request)
    rd = _run(dash, name)
    ctx = await run_in_threadpool(run_context, dash, rd)
    job = dash.jobs.active_for(name)
    return page(request, "run", session, run=ctx, job=job, job_log=dash.jobs.log_tail(job.id) if job else "",
                can_resume=ctx["summary"].status == "interrupted" and resume_supported())


@router.get("/api/runs/{name}/curves")
async def run_curves(request: Request, name: str, offset: int = Query(0, ge=0)):
    rd = _run(dashboard(request), name)
    return await run_in_threadpool(curves.since, rd, offset)


@router.get("/runs/{name}/predictions", response_class=HTMLResponse)
async def predictions_page(request: Request, name: str, system: str = "", outcome: str = "", label: str = "",
                           page_no: int = Query(1, alias="page", ge=1), session: Session = Depends(require_session)):
    dash = dashboard(request)
    rd = _run(dash, name)
    stamp = _mtime(rd.predictions_path) + _mtime(rd.data.manifest_path)
    table = await run_in_threadpool(dash.cached, f"predictions:{name}", stamp, lambda: preds.scored(rd))
    shown = preds.browse(table, system, outcome, label, page_no)
    return page(request, "predictions", session, run_name=name, table=table, shown=shown,
                filters={"system": system, "outcome": outcome, "label": label})


@router.post("/runs/{name}/tags")
async def set_tags(request: Request, name: str, session: Session = Depends(require_csrf)):
    rd = _run(dashboard(request), name)
    form = await request.form()
    rd.set_tags(str(form.get("tags", "")).split(","))
    return RedirectResponse(f"/ui/runs/{name}", status_code=303)


@router.post("/runs/{name}/resume")
async def resume(request: Request, name: str, session: Session = Depends(require_csrf)):
    dash = dashboard(request)
    rd = _run(dash, name)
    if not resume_supported():
        raise ApiError(400, "this tunelab has no `run --resume`", "resume_unsupported")
    config = dash.dirs.config_path(name)
    try:
        dash.jobs.submit(name, config if config.is_file() else rd.config_path, resume=True)
    except UserError as e:
        raise ApiError(409, str(e), "job_conflict") from None
    return RedirectResponse(f"/ui/runs/{name}", status_code=303)


@router.get("/runs/{name}/files/{filename}")
async def download(request: Request, name: str, filename: str):
    return _download(_run(dashboard(request), name).downloads(), f"run {name}", filename)


def _download(files: dict, owner: str, filename: str) -> FileResponse:
    """`filename` of `files` (a run's or a study's downloads, by name) as an attachment; anything else is 404."""
    if filename not in files:
        raise ApiError(404, f"{owner} has no downloadable file {filename!r}", "not_found")
    return FileResponse(files[filename], filename=filename)


@router.get("/runs/{name}/export.zip")
async def download_export(request: Request, name: str):
    rd = _run(dashboard(request), name)
    if not rd.export_dir.is_dir():
        raise ApiError(404, f"run {name} has not been exported (tunelab export {rd.path})", "not_found")
    data = await run_in_threadpool(_zip, rd.export_dir)
    return StreamingResponse(io.BytesIO(data), media_type="application/zip",
                             headers={"content-disposition": f'attachment; filename="{name}-export.zip"'})


def _zip(folder) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:   # weights do not compress
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder))
    return buf.getvalue()


def _mtime(path) -> tuple:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return (None,)


# ---------------------------------------------------------------- compare


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request, run: list[str] = Query(default=[]), session: Session = Depends(require_session)):
    dash = dashboard(request)
    names = list(dict.fromkeys(run))
    if len(names) < 2:
        every = await run_in_threadpool(dash.index.summaries)
        return page(request, "compare_pick", session, runs=select(every), chosen=names)
    rds = [_run(dash, n) for n in names]
    data = await run_in_threadpool(compare_data.comparison, rds)
    return page(request, "compare", session, cmp=data)


# ---------------------------------------------------------------- tuning studies


@router.get("/studies", response_class=HTMLResponse)
async def studies_page(request: Request, session: Session = Depends(require_session)):
    dash = dashboard(request)
    found = await run_in_threadpool(lambda: [studies.summarize(sd) for sd in studies.study_dirs(dash.runs_dir)])
    return page(request, "studies", session, studies=found)


@router.get("/studies/{name}", response_class=HTMLResponse)
async def study_page(request: Request, name: str, session: Session = Depends(require_session)):
    sd = _study(dashboard(request), name)
    return page(request, "study", session, study=await run_in_threadpool(studies.summarize, sd))


@router.get("/api/studies/{name}")
async def study_json(request: Request, name: str):
    return await run_in_threadpool(studies.summarize, _study(dashboard(request), name))


@router.get("/studies/{name}/files/{filename}")
async def study_download(request: Request, name: str, filename: str):
    return _download(_study(dashboard(request), name).downloads(), f"study {name}", filename)


# ---------------------------------------------------------------- new run and jobs


@router.get("/new", response_class=HTMLResponse)
async def new_page(request: Request, session: Session = Depends(require_session)):
    return _new_form(request, session)


def _new_form(request, session, status=200, form=None, problems=None, validated=None):
    dash = dashboard(request)
    return page(request, "new", session, status=status, sections=newrun.form_fields(), form=form or {},
                problems=problems, validated=validated, max_upload_mb=dash.max_upload_bytes / 1e6)


@router.post("/new", response_class=HTMLResponse)
async def new_submit(request: Request, session: Session = Depends(require_csrf)):
    dash = dashboard(request)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    uploads = {s: form[f"upload_{s}"] for s in newrun.UPLOADS
               if getattr(form.get(f"upload_{s}"), "filename", None)}
    try:
        config = await run_in_threadpool(newrun.build, fields, uploads, dash.dirs, dash.runs_dir, dash.max_upload_bytes)
        # The page comes back with the uploads' saved paths in their fields: Start needs no second upload.
        fields.update({f"data.{s}": config["data"][s] for s in uploads})
        if fields.get("action") == "validate":
            ok, output = await run_in_threadpool(newrun.validate, newrun.write(dash.dirs, config, temporary=True))
            # 200 either way: validating worked; what it found is the page's content.
            return _new_form(request, session, 200, fields, validated={"ok": ok, "output": output})
        newrun.check_free(dash.runs_dir, config["name"])
        job = dash.jobs.submit(config["name"], newrun.write(dash.dirs, config))
    except UserError as e:
        return _new_form(request, session, 400, fields, problems=str(e))
    return RedirectResponse(f"/ui/jobs#job-{job.id}", status_code=303)


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, session: Session = Depends(require_session)):
    dash = dashboard(request)
    jobs = dash.jobs.jobs()
    return page(request, "jobs", session, jobs=jobs, logs={j.id: dash.jobs.log_tail(j.id, 4000) for j in jobs},
                parallel=dash.jobs.parallel)


@router.get("/api/jobs")
async def jobs_json(request: Request):
    return {"jobs": [j.as_dict() for j in dashboard(request).jobs.jobs()]}


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str, session: Session = Depends(require_csrf)):
    dash = dashboard(request)
    try:
        job = dash.jobs.cancel(job_id)
    except UserError as e:
        raise ApiError(404, str(e), "not_found") from None
    form = await request.form()
    back = "/ui/runs/" + job.name if form.get("back") == "run" else f"/ui/jobs#job-{job.id}"
    return RedirectResponse(back, status_code=303)

