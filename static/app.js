// cxr-fhir web pages: the only script besides htmx (the Content-Security-Policy allows no inline code).
(function () {
  "use strict";

  // Upload: progress bar, drag and drop onto the drop zone.
  document.addEventListener("htmx:xhr:progress", function (evt) {
    var form = evt.target.closest ? evt.target.closest("form.upload") : null;
    if (!form || !evt.detail.lengthComputable) return;
    var bar = form.querySelector("progress");
    bar.hidden = false;
    bar.value = Math.round((evt.detail.loaded / evt.detail.total) * 100);
    var label = form.querySelector(".upload-state");
    if (label) label.textContent = bar.value < 100 ? "Uploading… " + bar.value + "%" : "Analysing…";
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.target.closest ? evt.target.closest("form.upload") : null;
    if (!form) return;
    form.querySelector("progress").hidden = true;
    var label = form.querySelector(".upload-state");
    if (label) label.textContent = evt.detail.successful ? "Done." : "The upload failed; see the message below.";
    form.reset();
  });

  function submitUpload(form) {
    var label = form.querySelector(".upload-state");
    if (label) label.textContent = "Uploading…";
    htmx.trigger(form, "submit");
  }

  document.addEventListener("change", function (evt) {
    var t = evt.target;
    if (t.matches && t.matches("form.upload input[type=file]") && t.files.length) submitUpload(t.form);
    if (t.matches && t.matches("#toggle-boxes")) {
      document.querySelectorAll(".stage .boxes").forEach(function (svg) { svg.toggleAttribute("hidden", !t.checked); });
    }
    if (t.matches && t.matches("input[name=heatmap]")) {
      document.querySelectorAll(".stage img.overlay").forEach(function (img) {
        img.toggleAttribute("hidden", img.dataset.finding !== t.value);
      });
    }
  });

  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (evt) {
      var zone = evt.target.closest ? evt.target.closest(".dropzone") : null;
      if (!zone) return;
      evt.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    document.addEventListener(name, function (evt) {
      var zone = evt.target.closest ? evt.target.closest(".dropzone") : null;
      if (!zone) return;
      evt.preventDefault();
      zone.classList.remove("dragging");
      if (name === "drop" && evt.dataTransfer && evt.dataTransfer.files.length) {
        var form = zone.closest("form.upload");
        form.querySelector("input[type=file]").files = evt.dataTransfer.files;
        submitUpload(form);
      }
    });
  });
})();
