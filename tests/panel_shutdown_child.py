"""Child of test_panel_shutdown.py: a panel with three jobs streaming ~500 events a second from a fake
server, then the application quits mid-stream; prints "exited cleanly" when the process got that far."""
import sys, threading, time
from concurrent import futures
import grpc
from cinegen.common.proto import generator_pb2 as pb, generator_pb2_grpc as pb_grpc

class Slow(pb_grpc.GeneratorServicer):
    def GetCapabilities(self, request, context):
        spec = pb.ParamSpec(name="prompt", type="text", default_json='""', group="common")
        out = pb.ParamSpec(name="out", type="path", default_json='""', group="common")
        return pb.Capabilities(server_version="9", protocol_version=1,
                               pipelines=[pb.PipelineInfo(name="image", params=[spec, out])])
    def Submit(self, request, context):
        return pb.JobTicket(job_id=request.job_id, queue_position=1)
    def Watch(self, request, context):
        seq = 0
        while context.is_active():
            seq += 1
            yield pb.JobEvent(job_id=request.job_id, seq=seq, progress=pb.Progress(stage="x", fraction=min(seq / 1000, 0.99)))
            time.sleep(0.002)

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
pb_grpc.add_GeneratorServicer_to_server(Slow(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
from cinegen.common.connection import ConnectionSettings
from cinegen.plugin.hosts.standalone import StandaloneHost
from cinegen.plugin.model.history import History
from cinegen.plugin.qt import QtCore, ensure_application
from cinegen.plugin.ui.panel import Panel
app = ensure_application()
work = sys.argv[1]
panel = Panel(host=StandaloneHost(work), settings=ConnectionSettings(host="127.0.0.1", port=port),
              history=History(work + "/history.json"))
panel.show()
deadline = time.monotonic() + 20
while "image" not in panel.forms and time.monotonic() < deadline:
    app.processEvents(QtCore.QEventLoop.AllEvents, 20)
for _ in range(3):
    panel.forms["image"].set_values({"prompt": "p"})
    panel.generate()
end = time.monotonic() + 0.4
while time.monotonic() < end:
    app.processEvents(QtCore.QEventLoop.AllEvents, 10)
QtCore.QTimer.singleShot(0, app.quit)
(getattr(app, "exec", None) or app.exec_)()
print("exited cleanly")
