/* tmdafm /classify: the upload zone (dcc.Upload, react-dropzone) silently drops a file over its size limit, so
 * no callback ever hears of it. Check the chosen or dropped files here and say which were not uploaded and why. */
(function () {
  function refuse(files, zone) {
    const host = zone.closest("[data-max-bytes]");
    const out = document.getElementById("classify-upload-refused");
    if (!host || !out) { return; }
    const limit = Number(host.getAttribute("data-max-bytes"));
    const mib = function (bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; };
    const refused = Array.from(files || []).filter(function (f) { return f.size > limit; });
    out.textContent = refused.map(function (f) {
      return f.name + ": " + mib(f.size) + " is over the " + mib(limit) + " limit; it was not uploaded";
    }).join("\n");
  }
  document.addEventListener("change", function (event) {
    const zone = event.target.closest && event.target.closest("#classify-upload");
    if (zone) { refuse(event.target.files, zone); }
  }, true);
  document.addEventListener("drop", function (event) {
    const zone = event.target.closest && event.target.closest("#classify-upload");
    if (zone && event.dataTransfer) { refuse(event.dataTransfer.files, zone); }
  }, true);
})();
