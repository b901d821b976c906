// Page behaviour that is not htmx's. A file of our own rather than inline handlers (hx-on), which
// htmx runs through `new Function` and the Content-Security-Policy (script-src 'self') forbids.

// Preset buttons fill in the form's size and steps.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.preset");
  if (!button || !button.form) return;
  const form = button.form;
  form.elements.width.value = button.dataset.width;
  form.elements.height.value = button.dataset.height;
  form.elements.steps.value = button.dataset.steps;
});
