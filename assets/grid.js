/* tmdafm tables (dash-ag-grid, pages/_ui.py data_grid): the "Download CSV" button under a table exports what the
 * table shows (its sorting and filters applied) in the browser, through the grid's own API; no server round trip. */
(function () {
  document.addEventListener("click", function (event) {
    const button = event.target.closest && event.target.closest("[data-grid-export]");
    if (!button || !window.dash_ag_grid) { return; }
    const api = window.dash_ag_grid.getApi(button.getAttribute("data-grid-export"));
    if (api) { api.exportDataAsCsv({fileName: button.getAttribute("data-file-name")}); }
  });
})();
