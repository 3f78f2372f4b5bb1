// Forms marked data-confirm="question" ask it before they are sent (delete,
// cancel, unsubscribe); without JavaScript they are sent at once.
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.target.dataset ? event.target.dataset.confirm : "";
  if (question && !window.confirm(question)) event.preventDefault();
});
