/* tmdafm clientside callbacks: hover thumbnails without a server round trip.
 * The latent page sends the thumbnail atlas ({image: data URI}) and the per-point metadata once (dcc.Store);
 * hovering a point only looks them up here. */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  tmdafm: {
    hoverCard: function (hoverData, meta, atlas) {
      const none = window.dash_clientside.no_update;
      if (!hoverData || !hoverData.points || !hoverData.points.length || !meta) {
        return [none, none, none];
      }
      const point = hoverData.points.find(function (p) { return p.curveNumber === 0; });
      if (!point) { return [none, none, none]; }
      const row = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
      if (row === undefined || row === null || row >= meta.image.length) { return [none, none, none]; }
      const image = meta.image[row];
      const lines = [
        "material: " + (meta.material[row] || "unlabelled"),
        "predicted: " + (meta.predicted[row] || "—"),
        "split: " + (meta.split[row] || "—") + " · sample " + (meta.sample_id[row] || "—"),
      ];
      const src = (atlas && atlas[image]) || "";
      return [src, image, lines.join("\n")];
    },
  },
});
