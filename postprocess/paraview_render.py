"""Render potential and proton density from ``fields.xdmf`` with ParaView (pvbatch).

Usage (no X server needed):

    xvfb-run -a pvbatch postprocess/paraview_render.py RESULTS_DIR OUT_DIR [TIME_INDEX]

Runs in ParaView's own Python (tested with Debian 12's ParaView 5.11): imports nothing from
protonfem. Opens RESULTS_DIR/fields.xdmf (written by DOLFINx's XDMFFile: one grid per function)
with the Xdmf3 reader, and writes OUT_DIR/<field>_<step>.png for each field present. 1-D meshes
are drawn as line charts versus z [nm], 2-D/3-D meshes as colour maps; the proton density uses a
logarithmic colour scale. Exit status 0 on success, 2 when the results are missing.
"""
import os
import sys

FIELDS = ("potential", "proton_density")
LOG_FIELDS = ("proton_density",)
TITLES = {"potential": "potential [V]", "proton_density": "proton density [m^-3]"}
PICK_SCRIPT = """
name = "@NAME@"
inp = self.GetInputDataObject(0, 0)
out = self.GetOutputDataObject(0)
it = inp.NewIterator()
it.InitTraversal()
while not it.IsDoneWithTraversal():
    ds = it.GetCurrentDataObject()
    if ds.GetPointData().GetArray(name) is not None or ds.GetCellData().GetArray(name) is not None:
        out.ShallowCopy(ds)
        break
    it.GoToNextItem()
"""


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    results_dir, out_dir = argv[1], argv[2]
    time_index = int(argv[3]) if len(argv) > 3 else -1
    xdmf = os.path.join(results_dir, "fields.xdmf")
    if not os.path.isfile(xdmf):
        print(f"paraview_render: no field output in {results_dir!r}: missing 'fields.xdmf'",
              file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)

    from paraview import simple as pvs

    reader = pvs.Xdmf3ReaderS(registrationName="fields", FileName=[xdmf])
    times = reader.TimestepValues
    times = list(times) if isinstance(times, (list, tuple)) or hasattr(times, "__len__") else [times]
    if not times:
        times = [0.0]
    step = time_index + len(times) if time_index < 0 else time_index
    if not 0 <= step < len(times):
        print(f"paraview_render: time index {time_index} out of range ({len(times)} steps)",
              file=sys.stderr)
        return 2
    t = times[step]
    reader.UpdatePipeline(t)
    available = set(reader.PointData.keys()) | set(reader.CellData.keys())

    written = []
    for name in FIELDS:
        if name not in available:
            continue
        # DOLFINx writes one XDMF grid per function; 5.11's Xdmf3 reader returns them as
        # unnamed pieces, so pick the piece that carries this array.
        merged = pvs.ProgrammableFilter(registrationName=f"pick_{name}", Input=reader)
        merged.OutputDataSetType = "vtkUnstructuredGrid"
        merged.Script = PICK_SCRIPT.replace("@NAME@", name)
        merged.UpdatePipeline(t)
        info = merged.GetDataInformation()
        if info.GetNumberOfPoints() == 0:
            continue
        pinfo = merged.PointData.GetArray(name)
        cinfo = merged.CellData.GetArray(name)
        if pinfo is None and cinfo is None:
            continue
        assoc = "POINTS" if pinfo is not None else "CELLS"
        rng = (pinfo or cinfo).GetRange(0)
        b = info.GetBounds()
        one_d = (b[3] - b[2]) == 0 and (b[5] - b[4]) == 0
        png = os.path.join(out_dir, f"{name}_{step:04d}.png")
        title = f"{name.replace('_', ' ')}, t = {t:.4g} s"
        if one_d:
            # line chart versus z in nm (the 1-D coordinate is x)
            calc = pvs.Calculator(Input=merged, ResultArrayName="z_nm", Function="coordsX*1e9")
            if assoc == "CELLS":
                calc = pvs.CellDatatoPointData(Input=calc)
            view = pvs.CreateView("XYChartView")
            view.ViewSize = [1000, 600]
            view.ViewTime = t
            rep = pvs.Show(calc, view, "XYChartRepresentation")
            rep.UseIndexForXAxis = 0
            rep.XArrayName = "z_nm"
            rep.SeriesVisibility = [name]
            view.ChartTitle = title
            view.BottomAxisTitle = "z [nm]"
            view.LeftAxisTitle = TITLES.get(name, name)
            view.LeftAxisLogScale = 1 if (name in LOG_FIELDS and rng[0] > 0) else 0
            pvs.SaveScreenshot(png, view, ImageResolution=[1000, 600])
        else:
            view = pvs.CreateView("RenderView")
            view.ViewSize = [1400, 700]
            view.ViewTime = t
            view.OrientationAxesVisibility = 0
            view.Background = [1, 1, 1]
            try:  # ParaView >= 5.10: backgrounds come from the colour palette unless overridden
                view.UseColorPaletteForBackground = 0
            except AttributeError:
                pass
            # metres -> nm: VTK renders 1e-7-sized geometry poorly (black surfaces, clipping)
            scaled = pvs.Transform(registrationName=f"nm_{name}", Input=merged)
            scaled.Transform = "Transform"
            scaled.Transform.Scale = [1e9, 1e9, 1e9]
            b = [v * 1e9 for v in b]
            rep = pvs.Show(scaled, view)
            pvs.ColorBy(rep, (assoc, name))
            lut = pvs.GetColorTransferFunction(name)
            lut.ApplyPreset("Viridis (matplotlib)", True)
            lut.RescaleTransferFunction(rng[0], rng[1])
            if name in LOG_FIELDS and rng[0] > 0:
                lut.MapControlPointsToLogSpace()
                lut.UseLogScale = 1
            rep.SetScalarBarVisibility(view, True)
            bar = pvs.GetScalarBar(lut, view)
            bar.Title = TITLES.get(name, name)
            bar.ComponentTitle = ""
            bar.TitleColor = [0, 0, 0]
            bar.LabelColor = [0, 0, 0]
            text = pvs.Text(registrationName=f"title_{name}", Text=title)
            trep = pvs.Show(text, view)
            trep.Color = [0, 0, 0]
            trep.WindowLocation = "Upper Left Corner"
            cx, cy, cz = (b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2
            # (pvbatch may shadow the builtin max with numpy's)
            extent = sorted([b[1] - b[0], b[3] - b[2], b[5] - b[4]])[-1]
            if (b[5] - b[4]) == 0:
                view.InteractionMode = "2D"
                view.CameraPosition = [cx, cy, 4.0 * extent]
                view.CameraViewUp = [0, 1, 0]
            else:
                view.CameraPosition = [cx + 2 * extent, cy - 2 * extent, cz + 2 * extent]
                view.CameraViewUp = [0, 0, 1]
            view.CameraFocalPoint = [cx, cy, cz]
            view.ResetCamera(False)
            try:
                pvs.GetActiveCamera().Zoom(1.2)
            except Exception:
                pass
            rep.DataAxesGrid.GridAxesVisibility = 1
            rep.DataAxesGrid.XTitle = "x [nm]"
            rep.DataAxesGrid.YTitle = "z [nm]" if (b[5] - b[4]) == 0 else "y [nm]"
            rep.DataAxesGrid.ZTitle = "" if (b[5] - b[4]) == 0 else "z [nm]"
            for attr in ("XTitleColor", "YTitleColor", "ZTitleColor", "XLabelColor",
                         "YLabelColor", "ZLabelColor", "GridColor"):
                setattr(rep.DataAxesGrid, attr, [0, 0, 0])
            pvs.SaveScreenshot(png, view, ImageResolution=[1400, 700])
        written.append(png)
        pvs.Delete(view)
        del view
    if not written:
        print(f"paraview_render: none of {FIELDS} found in {xdmf}", file=sys.stderr)
        return 2
    for png in written:
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
