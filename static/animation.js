// The animation's slider (templates/_animation.html): steps through a done job's kept previews.
// Listeners sit on the document, so a job panel that htmx swaps in after the page loaded works too.

// Without JavaScript the slider could move nothing: static/app.css shows it only with this class.
document.documentElement.classList.add("animation-js");

function frameText(step, total, index, count) {
  const text = `Step ${step}/${total}`;
  return count === Number(total) ? text : `${text} · preview ${index} of ${count}`;
}

function showFrame(slider) {
  const steps = (slider.dataset.steps || "").split(",").filter(Boolean);
  const index = Math.min(Math.max(Number(slider.value) || 1, 1), steps.length);
  const step = steps[index - 1];
  const stepper = slider.closest(".frame-stepper");
  if (!step || !stepper) return;
  const total = slider.dataset.total;
  const image = stepper.querySelector("img.frame-image");
  if (image) {
    image.src = `/jobs/${encodeURIComponent(slider.dataset.job)}/frames/${step}.jpg`;
    image.alt = `Preview at step ${step} of ${total}`;
  }
  const label = stepper.querySelector(".frame-label");
  const text = frameText(step, total, index, steps.length);
  if (label) label.textContent = text;
  slider.setAttribute("aria-valuetext", `Step ${step}/${total}`);
}

document.addEventListener("input", (event) => {
  const slider = event.target instanceof Element ? event.target.closest("input.frame-slider") : null;
  if (slider) showFrame(slider);
});
