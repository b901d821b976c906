// Page behaviour that is not htmx's. A file of our own rather than inline handlers (hx-on), which
// htmx runs through `new Function` and the Content-Security-Policy (script-src 'self') forbids.

// Preset buttons fill in the form's size and steps. Setting .value fires no event, so one "input" on the
// form tells what listens to it (the estimate, templates/home.html) that the form changed.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.preset");
  if (!button || !button.form) return;
  const form = button.form;
  form.elements.width.value = button.dataset.width;
  form.elements.height.value = button.dataset.height;
  form.elements.steps.value = button.dataset.steps;
  form.dispatchEvent(new Event("input", { bubbles: true }));
});

// Aspect-ratio buttons: each carries its valid size at every offered area (zimage_sse/sizes.py), so the
// page never computes a size of its own; the area select picks which one the buttons show and set.
function chosenArea(form) {
  const select = form.querySelector("[data-aspect-area]");
  return select ? select.value : null;
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.aspect");
  if (!button || !button.form) return;
  const [width, height] = JSON.parse(button.dataset.sizes)[chosenArea(button.form)];
  button.form.elements.width.value = width;
  button.form.elements.height.value = height;
  button.form.dispatchEvent(new Event("input", { bubbles: true }));
});

document.addEventListener("change", (event) => {
  const select = event.target.closest("[data-aspect-area]");
  if (!select || !select.form) return;
  for (const button of select.form.querySelectorAll("button.aspect")) {
    const [width, height] = JSON.parse(button.dataset.sizes)[select.value];
    button.querySelector(".aspect-size").textContent = `${width}×${height}`;
  }
});

// Ctrl+Enter (Cmd+Enter on a Mac) submits the job form from anywhere in it, as in A1111 and ComfyUI.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
  const form = event.target.closest ? event.target.closest("form.job-form") : null;
  if (!form) return;
  event.preventDefault();
  form.requestSubmit();
});
