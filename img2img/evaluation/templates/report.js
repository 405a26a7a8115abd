(function(){
  var slider=document.getElementById('sample-slider');
  if(!slider) return;
  var thumbs=Array.prototype.slice.call(document.querySelectorAll('.strip img'));
  var view=document.getElementById('sample-view'), label=document.getElementById('sample-label');
  function show(i){
    view.src=thumbs[i].src; label.textContent='step '+thumbs[i].dataset.step;
    thumbs.forEach(function(t,j){t.classList.toggle('active',j===i);});
  }
  slider.addEventListener('input',function(){show(+slider.value);});
  thumbs.forEach(function(t,i){t.addEventListener('click',function(){slider.value=i;show(i);});});
  show(+slider.value);
})();
