// The gallery's image viewer (templates/_viewer.html): clicking a card's image (templates/_card.html)
// opens the full image in a modal <dialog> instead of following the link to the job page. Everything it
// shows comes from the card's data- attributes, rendered by the server (the A1111 parameters text among
// them), so it makes no request of its own besides the image.
(() => {
  const viewer = document.getElementById("viewer");
  // Without <dialog> support the cards stay what they are without JavaScript: links to the job pages.
  if (!viewer || typeof viewer.showModal !== "function") return;
  const part = (name) => viewer.querySelector(`[data-viewer="${name}"]`);
  const image = viewer.querySelector(".viewer-image");
  const title = viewer.querySelector(".viewer-title");
  const caption = viewer.querySelector(".viewer-caption");
  const said = viewer.querySelector(".viewer-said");
  const [close, prev, next, download, use, job] = ["close", "prev", "next", "download", "use", "job"].map(part);
  let cards = [];
  let index = -1;

  const cardsOnPage = () => [...document.querySelectorAll("a.card-image[data-full]")];

  function show(at) {
    index = (at + cards.length) % cards.length; // the first and the last are neighbours
    const card = cards[index];
    const data = card.dataset;
    image.src = data.full;
    image.alt = data.prompt;
    title.textContent = data.prompt;
    caption.textContent = `${data.size} · ${index + 1} of ${cards.length}`;
    download.href = data.full;
    download.setAttribute("download", data.name);
    use.href = data.use;
    job.href = card.getAttribute("href");
    prev.disabled = next.disabled = cards.length < 2;
    said.textContent = "";
  }

  function say(message) {
    // Emptied first so that the same words said twice (two copies) are announced twice.
    said.textContent = "";
    requestAnimationFrame(() => { said.textContent = message; });
  }

  async function copy(text, what) {
    try {
      await navigator.clipboard.writeText(text);
      say(`Copied the ${what}`);
    } catch (error) {
      // navigator.clipboard exists only on HTTPS and localhost, and the browser may refuse.
      say(`Could not copy the ${what}: the browser allows the clipboard only on HTTPS or localhost`);
    }
  }

  document.addEventListener("click", (event) => {
    // A middle click or a modifier keeps the browser's meaning: open the job page in a tab.
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const card = event.target.closest("a.card-image[data-full]");
    if (!card) return;
    event.preventDefault();
    cards = cardsOnPage();
    show(cards.indexOf(card));
    viewer.showModal();
    close.focus();
  });

  close.addEventListener("click", () => viewer.close());
  prev.addEventListener("click", () => show(index - 1));
  next.addEventListener("click", () => show(index + 1));
  part("copy-prompt").addEventListener("click", () => copy(cards[index].dataset.prompt, "prompt"));
  part("copy-parameters").addEventListener("click", () => copy(cards[index].dataset.parameters, "parameters"));

  viewer.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight") show(index + 1);
    else if (event.key === "ArrowLeft") show(index - 1);
    else return;
    event.preventDefault();
  });
  // A click on the backdrop (the dialog itself, outside its body) closes it, as Escape does.
  viewer.addEventListener("click", (event) => {
    if (event.target === viewer) viewer.close();
  });
  // Escape, the close button and the backdrop all end here: focus goes back to the card last shown.
  viewer.addEventListener("close", () => {
    if (cards[index]) cards[index].focus();
  });
})();
